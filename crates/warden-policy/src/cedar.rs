//! Cedar: compiling the TOML tables to Cedar text (SPEC §6), loading the user's
//! `.cedar` files, and evaluating them per request.
//!
//! TOML rules are decided natively (hash lookups); the compiled text exists so that
//! people and tools can read the policy as Cedar, and a test checks that the real
//! Cedar authorizer reaches the same decisions on it. User Cedar policies are
//! partitioned at load time by action and by `resource ==` constraint, so a request
//! evaluates only the policies that can apply to it, and none at all when none can.
//!
//! Entity model:
//! - principal `Warden::Session::"<id>"` { user, machine, agent: String, labels: Record }
//! - resources `Warden::Host::"<name or ip>"`, `Warden::Path::"/abs"`,
//!   `Warden::Credential::"<name>"`, `Warden::Tool::"<server>/<tool>"`,
//!   `Warden::Prompt::"<server>/<prompt>"`, `Warden::Resource::"<server>/<uri>"`. Resources carry
//!   no attributes (what is known about them is in the context), so the entity store is
//!   the principal alone and is built once per principal, not per request.
//!
//! Context per action:
//! - connect: host: String, port: Long, protocol: "tcp", ip: ipaddr (only for IP literals)
//! - http: host, method, path (normalized), path_ok: Bool, path_depth: Long, scheme, port, ip?
//! - mount: path, tilde (the path with home written `~`), mode ("ro" | "rw"), root /
//!   root_tilde (host path of the workspace or mount exposing the path, "" if none),
//!   root_kind ("workspace" | "mount" | "")
//! - use_credential: host: String, ip?
//! - call_tool: server, tool, args (the JSON arguments; null dropped, floats as strings)
//! - get_prompt: server, prompt, args (the prompt's string arguments)
//! - read_resource: server, uri (the server's own URI, or URI template when listing)

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity,
    EntityId, EntityTypeName, EntityUid, Policy as CedarPolicy, PolicyId, PolicySet,
    ResourceConstraint, RestrictedExpression,
};
use globset::GlobBuilder;

use crate::doc::{HostEntry, MountMode, PolicyDoc, WorkspaceMode};
use crate::error::{Diagnostic, SourceMap, nearest};
use crate::host::{HostKind, PortSpec};

pub(crate) const ACTIONS: [&str; N_ACTS] = [
    "connect",
    "http",
    "mount",
    "use_credential",
    "call_tool",
    "get_prompt",
    "read_resource",
];
const RESOURCE_TYPES: [&str; N_ACTS] = [
    "Host",
    "Host",
    "Path",
    "Credential",
    "Tool",
    "Prompt",
    "Resource",
];
const N_ACTS: usize = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Act {
    Connect = 0,
    Http = 1,
    Mount = 2,
    UseCredential = 3,
    CallTool = 4,
    GetPrompt = 5,
    ReadResource = 6,
}

// ---------------------------------------------------------------------------------
// Files

/// Files under `base` matching `pattern` (relative; `*`, `**`, `?`, `[..]`), sorted.
pub(crate) fn expand_glob(base: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    if pattern.starts_with('/') || pattern.split('/').any(|c| c == "..") {
        return Err("use a path relative to the policy's directory, without `..`".into());
    }
    let glob = GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| e.to_string())?
        .compile_matcher();
    // Walk only below the pattern's literal prefix directory.
    let (start, is_literal_file) = glob_root(base, pattern);
    if is_literal_file {
        return Ok(if start.is_file() { vec![start] } else { vec![] });
    }
    let mut out = Vec::new();
    let mut stack = vec![start];
    let mut visited = 0usize;
    while let Some(dir) = stack.pop() {
        visited += 1;
        if visited > 10_000 {
            return Err("too many directories to search".into());
        }
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(base)
                && glob.is_match(rel)
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Where `pattern` (checked by [`expand_glob`]) looks under `base`: its literal prefix
/// directory, or the file itself (`true`) when it has no wildcard.
pub(crate) fn glob_root(base: &Path, pattern: &str) -> (PathBuf, bool) {
    let literal: Vec<&str> = pattern
        .split('/')
        .take_while(|c| !c.contains(['*', '?', '[', '{']))
        .collect();
    let is_literal_file = literal.len() == pattern.split('/').count();
    (base.join(literal.join("/")), is_literal_file)
}

/// Byte ranges of the policies in a Cedar file (each ending at its `;`), skipping
/// strings and comments. Trailing text without `;` becomes a range of its own so the
/// parser reports it.
fn split_policies(src: &str) -> Vec<(usize, usize)> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if start.is_none() {
            start = Some(i);
        }
        if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if c == b';'
            && let Some(s) = start.take()
        {
            out.push((s, i + 1));
        }
        i += 1;
    }
    if let Some(s) = start {
        out.push((s, b.len()));
    }
    out
}

#[derive(Debug, Clone)]
pub(crate) struct UserRule {
    pub file: String,
    pub line: u32,
    pub effect: Effect,
}

#[derive(Debug, Default)]
struct Bucket {
    general: Option<PolicySet>,
    by_resource: HashMap<String, PolicySet>,
}

/// The user's Cedar policies, partitioned per action and resource.
#[derive(Debug, Default)]
pub(crate) struct UserCedar {
    buckets: [Bucket; N_ACTS],
    /// Per action: policies whose outcome depends on the principal alone (no
    /// `resource ==`/`in` scope, no `context`/`resource` in conditions). Evaluated once
    /// per principal and action, then reused for every request of that session.
    principal_only: [Option<PolicySet>; N_ACTS],
    /// Distinguishes policies in the per-thread cache of principal-only outcomes.
    instance: u64,
    pub rules: HashMap<PolicyId, UserRule>,
    /// (display name, text) of each file, for `to_cedar`.
    pub texts: Vec<(String, String)>,
}

impl UserCedar {
    pub fn load(
        files: &[PathBuf],
        base_dir: &Path,
        diags: &mut Vec<Diagnostic>,
    ) -> (UserCedar, Vec<u8>) {
        let mut uc = UserCedar::default();
        let mut digest_input = Vec::new();
        let mut parsed: Vec<CedarPolicy> = Vec::new();
        for f in files {
            let display = f
                .strip_prefix(base_dir)
                .unwrap_or(f)
                .to_string_lossy()
                .into_owned();
            let text = match std::fs::read_to_string(f) {
                Ok(t) => t,
                Err(e) => {
                    diags.push(Diagnostic::whole_file(
                        &display,
                        format!("cannot read: {e}"),
                    ));
                    continue;
                }
            };
            digest_input.extend_from_slice(display.as_bytes());
            digest_input.push(0);
            digest_input.extend_from_slice(text.as_bytes());
            digest_input.push(0);
            let sm = SourceMap::new(&display, &text);
            let mut seen: HashMap<u32, u32> = HashMap::new();
            for (s, e) in split_policies(&text) {
                let chunk = &text[s..e];
                let line = sm.line_of(s);
                let n = seen.entry(line).or_insert(0);
                *n += 1;
                let id = if *n == 1 {
                    format!("{display}:{line}")
                } else {
                    format!("{display}:{line}#{n}")
                };
                match CedarPolicy::parse(Some(PolicyId::new(&id)), chunk) {
                    Ok(p) => {
                        if let Some(d) = check_actions(&p, &sm, s, chunk) {
                            diags.push(d);
                            continue;
                        }
                        uc.rules.insert(
                            PolicyId::new(&id),
                            UserRule {
                                file: display.clone(),
                                line,
                                effect: p.effect(),
                            },
                        );
                        parsed.push(p);
                    }
                    Err(errs) => {
                        for err in errs.iter() {
                            diags.push(cedar_diag(&sm, s, err));
                        }
                    }
                }
            }
            uc.texts.push((display, text));
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        uc.instance = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        uc.partition(parsed);
        (uc, digest_input)
    }

    fn partition(&mut self, policies: Vec<CedarPolicy>) {
        let mut general: [Vec<CedarPolicy>; N_ACTS] = Default::default();
        let mut specific: [HashMap<String, Vec<CedarPolicy>>; N_ACTS] = Default::default();
        let mut by_principal: [Vec<CedarPolicy>; N_ACTS] = Default::default();
        for p in policies {
            let p_only = principal_only(&p);
            let acts: Vec<usize> = match p.action_constraint() {
                ActionConstraint::Any => (0..N_ACTS).collect(),
                ActionConstraint::Eq(a) => action_index(&a).into_iter().collect(),
                ActionConstraint::In(list) => list.iter().filter_map(action_index).collect(),
            };
            for a in acts {
                match p.resource_constraint() {
                    ResourceConstraint::Eq(uid) => {
                        let ty = uid.type_name().to_string();
                        if ty == format!("Warden::{}", RESOURCE_TYPES[a]) {
                            specific[a]
                                .entry(uid.id().unescaped().to_owned())
                                .or_default()
                                .push(p.clone());
                        }
                    }
                    ResourceConstraint::Any if p_only => by_principal[a].push(p.clone()),
                    ResourceConstraint::Is(t)
                        if p_only && t.to_string() == format!("Warden::{}", RESOURCE_TYPES[a]) =>
                    {
                        by_principal[a].push(p.clone())
                    }
                    _ => general[a].push(p.clone()),
                }
            }
        }
        for a in 0..N_ACTS {
            let po = std::mem::take(&mut by_principal[a]);
            if !po.is_empty() {
                let mut set = PolicySet::new();
                for p in po {
                    let _ = set.add(p);
                }
                self.principal_only[a] = Some(set);
            }
            let gen_list = std::mem::take(&mut general[a]);
            let make = |extra: &[CedarPolicy]| {
                let mut set = PolicySet::new();
                for p in gen_list.iter().chain(extra) {
                    let _ = set.add(p.clone());
                }
                set
            };
            let bucket = &mut self.buckets[a];
            if !gen_list.is_empty() {
                bucket.general = Some(make(&[]));
            }
            for (rid, list) in std::mem::take(&mut specific[a]) {
                bucket.by_resource.insert(rid, make(&list));
            }
        }
    }

    /// The policies a request for `act` on resource id `rid` must be evaluated against;
    /// `None` when no user policy can apply.
    pub fn relevant(&self, act: Act, rid: &str) -> Option<&PolicySet> {
        let b = &self.buckets[act as usize];
        b.by_resource.get(rid).or(b.general.as_ref())
    }
}

/// Does this policy's condition read only the principal? (Its EST names no variable
/// but `principal`.) Unknown shapes count as "no", which only costs speed.
fn principal_only(p: &CedarPolicy) -> bool {
    fn vars_ok(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => m.iter().all(|(k, v)| {
                if k == "Var" {
                    v.as_str() == Some("principal")
                } else {
                    vars_ok(v)
                }
            }),
            serde_json::Value::Array(a) => a.iter().all(vars_ok),
            _ => true,
        }
    }
    match p.to_json() {
        Ok(j) => j.get("conditions").is_some_and(vars_ok),
        Err(_) => false,
    }
}

fn action_index(uid: &EntityUid) -> Option<usize> {
    if uid.type_name().to_string() != "Warden::Action" {
        return None;
    }
    ACTIONS.iter().position(|a| *a == uid.id().unescaped())
}

/// Reject actions Warden never asks about: a typo there would silently never match.
fn check_actions(
    p: &CedarPolicy,
    sm: &SourceMap<'_>,
    start: usize,
    chunk: &str,
) -> Option<Diagnostic> {
    let uids = match p.action_constraint() {
        ActionConstraint::Any => return None,
        ActionConstraint::Eq(a) => vec![a],
        ActionConstraint::In(l) => l,
    };
    for uid in uids {
        if action_index(&uid).is_some() {
            continue;
        }
        let id = uid.id().unescaped().to_owned();
        let off = chunk
            .find(&format!("\"{id}\""))
            .map_or(start, |o| start + o);
        let hint = match nearest(&id, &ACTIONS) {
            Some(n) => format!("did you mean `Warden::Action::\"{n}\"`?"),
            None => format!("Warden's actions: {}", ACTIONS.join(", ")),
        };
        return Some(sm.diag(
            off..off + id.len() + 2,
            format!("unknown action `{uid}`"),
            Some(hint),
        ));
    }
    None
}

fn cedar_diag(
    sm: &SourceMap<'_>,
    chunk_start: usize,
    err: &cedar_policy::ParseError,
) -> Diagnostic {
    use miette::Diagnostic as _;
    let span = err
        .labels()
        .and_then(|mut l| l.next())
        .map(|l| chunk_start + l.offset()..chunk_start + l.offset() + l.len())
        .unwrap_or(chunk_start..chunk_start + 1);
    let hint = err.help().map(|h| h.to_string());
    sm.diag(span, format!("invalid Cedar: {err}"), hint)
}

// ---------------------------------------------------------------------------------
// Per-request evaluation

/// Entity type names and action uids, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct CedarNames {
    session: EntityTypeName,
    host: EntityTypeName,
    path: EntityTypeName,
    credential: EntityTypeName,
    tool: EntityTypeName,
    prompt: EntityTypeName,
    resource: EntityTypeName,
    actions: Vec<EntityUid>,
}

impl CedarNames {
    pub fn new() -> Option<Self> {
        let t = |s: &str| EntityTypeName::from_str(s).ok();
        let action_ty = t("Warden::Action")?;
        Some(Self {
            session: t("Warden::Session")?,
            host: t("Warden::Host")?,
            path: t("Warden::Path")?,
            credential: t("Warden::Credential")?,
            tool: t("Warden::Tool")?,
            prompt: t("Warden::Prompt")?,
            resource: t("Warden::Resource")?,
            actions: ACTIONS
                .iter()
                .map(|a| EntityUid::from_type_name_and_id(action_ty.clone(), EntityId::new(a)))
                .collect(),
        })
    }

    fn resource_type(&self, act: Act) -> &EntityTypeName {
        match act {
            Act::Connect | Act::Http => &self.host,
            Act::Mount => &self.path,
            Act::UseCredential => &self.credential,
            Act::CallTool => &self.tool,
            Act::GetPrompt => &self.prompt,
            Act::ReadResource => &self.resource,
        }
    }
}

/// What Cedar needs to know about one request, before any Cedar value is built.
#[derive(Debug, Clone)]
pub(crate) struct CedarInput {
    pub act: Act,
    pub resource_id: String,
    pub context: Vec<(&'static str, Val)>,
}

/// A plain value, converted to Cedar only when a Cedar evaluation happens.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Str(String),
    Long(i64),
    Bool(bool),
    Ip(String),
    Json(serde_json::Value),
}

fn to_expr(v: &Val) -> Result<RestrictedExpression, String> {
    Ok(match v {
        Val::Str(s) => RestrictedExpression::new_string(s.clone()),
        Val::Long(n) => RestrictedExpression::new_long(*n),
        Val::Bool(b) => RestrictedExpression::new_bool(*b),
        Val::Ip(s) => RestrictedExpression::new_ip(s),
        Val::Json(j) => json_expr(j, 0)?,
    })
}

/// JSON → Cedar value. Cedar has no null or floats: null fields are dropped and
/// floats become strings, so a tool's arguments are always representable.
fn json_expr(j: &serde_json::Value, depth: usize) -> Result<RestrictedExpression, String> {
    use serde_json::Value as J;
    if depth > 32 {
        return Err("tool arguments nest too deeply".into());
    }
    Ok(match j {
        J::Null => {
            RestrictedExpression::new_record(std::iter::empty()).map_err(|e| e.to_string())?
        }
        J::Bool(b) => RestrictedExpression::new_bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => RestrictedExpression::new_long(i),
            None => RestrictedExpression::new_string(n.to_string()),
        },
        J::String(s) => RestrictedExpression::new_string(s.clone()),
        J::Array(a) => RestrictedExpression::new_set(
            a.iter()
                .filter(|v| !v.is_null())
                .map(|v| json_expr(v, depth + 1))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        J::Object(o) => RestrictedExpression::new_record(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| Ok((k.clone(), json_expr(v, depth + 1)?)))
                .collect::<Result<Vec<_>, String>>()?,
        )
        .map_err(|e| e.to_string())?,
    })
}

fn principal_entities(
    names: &CedarNames,
    principal: &crate::Principal,
) -> Result<(EntityUid, Entities), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let p_uid =
        EntityUid::from_type_name_and_id(names.session.clone(), EntityId::new(&principal.session));
    let labels = RestrictedExpression::new_record(
        principal
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone()))),
    )
    .map_err(|e| err(&e))?;
    let p_attrs = HashMap::from([
        (
            "user".to_owned(),
            RestrictedExpression::new_string(principal.user.clone()),
        ),
        (
            "machine".to_owned(),
            RestrictedExpression::new_string(principal.machine.clone()),
        ),
        (
            "agent".to_owned(),
            RestrictedExpression::new_string(principal.agent.clone()),
        ),
        ("labels".to_owned(), labels),
    ]);
    let p_ent = Entity::new(p_uid.clone(), p_attrs, HashSet::new()).map_err(|e| err(&e))?;
    let entities = Entities::from_entities([p_ent], None).map_err(|e| err(&e))?;
    Ok((p_uid, entities))
}

/// Per-thread cache for the principal of the last decision: its entity store and the
/// principal-only outcomes computed so far, keyed by (policy instance, action).
struct PrincipalCache {
    principal: crate::Principal,
    uid: EntityUid,
    entities: Entities,
    outcomes: Vec<(u64, Act, CedarOutcome)>,
}

thread_local! {
    // A session asks many questions as the same principal: building its entity store
    // and evaluating principal-only policies is most of the cost of a Cedar
    // evaluation, so each thread keeps the last principal. Thread-local: no lock on
    // the decision path.
    static PRINCIPAL: RefCell<Option<PrincipalCache>> = const { RefCell::new(None) };
}

/// Evaluate the user's Cedar policies for one request: the principal-only ones from
/// the per-thread cache, the others (`set`) against a freshly built request.
pub(crate) fn evaluate_user(
    names: &CedarNames,
    user: &UserCedar,
    principal: &crate::Principal,
    input: &CedarInput,
    set: Option<&PolicySet>,
) -> Result<CedarOutcome, String> {
    let po_set = user.principal_only[input.act as usize].as_ref();
    if po_set.is_none() && set.is_none() {
        return Ok(CedarOutcome::default());
    }
    PRINCIPAL.with(|cell| {
        let mut slot = cell
            .try_borrow_mut()
            .map_err(|_| "re-entrant Cedar evaluation".to_owned())?;
        if slot.as_ref().is_none_or(|c| &c.principal != principal) {
            let (uid, entities) = principal_entities(names, principal)?;
            *slot = Some(PrincipalCache {
                principal: principal.clone(),
                uid,
                entities,
                outcomes: Vec::new(),
            });
        }
        let Some(cache) = slot.as_mut() else {
            return Err("no principal".to_owned());
        };
        let mut po = CedarOutcome::default();
        if let Some(po_set) = po_set {
            let key = (user.instance, input.act);
            match cache.outcomes.iter().find(|(i, a, _)| (*i, *a) == key) {
                Some((_, _, o)) => po = o.clone(),
                None => {
                    // Any request of this action will do: these policies never look at it.
                    let probe = CedarInput {
                        act: input.act,
                        resource_id: String::new(),
                        context: Vec::new(),
                    };
                    let req = build_request(names, &cache.uid, &probe)?;
                    po = evaluate(user, po_set, &req, &cache.entities);
                    if cache.outcomes.len() > 64 {
                        cache.outcomes.clear();
                    }
                    cache.outcomes.push((key.0, key.1, po.clone()));
                }
            }
        }
        let rest = match set {
            Some(set) => {
                let req = build_request(names, &cache.uid, input)?;
                evaluate(user, set, &req, &cache.entities)
            }
            None => CedarOutcome::default(),
        };
        Ok(CedarOutcome {
            forbid: po.forbid.clone().or(rest.forbid),
            permit: po.permit.or(rest.permit),
        })
    })
}

/// The Cedar request (principal, action, resource, context) for one request.
pub(crate) fn build_request(
    names: &CedarNames,
    p_uid: &EntityUid,
    input: &CedarInput,
) -> Result<cedar_policy::Request, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let r_uid = EntityUid::from_type_name_and_id(
        names.resource_type(input.act).clone(),
        EntityId::new(&input.resource_id),
    );
    let ctx = Context::from_pairs(
        input
            .context
            .iter()
            .map(|(k, v)| Ok(((*k).to_owned(), to_expr(v)?)))
            .collect::<Result<Vec<_>, String>>()?,
    )
    .map_err(|e| err(&e))?;
    let action = names
        .actions
        .get(input.act as usize)
        .cloned()
        .ok_or_else(|| "unknown action".to_owned())?;
    cedar_policy::Request::new(p_uid.clone(), action, r_uid, ctx, None).map_err(|e| err(&e))
}

/// Request and entity store, owned (for callers outside the decision path).
pub(crate) fn build_owned(
    names: &CedarNames,
    principal: &crate::Principal,
    input: &CedarInput,
) -> Result<(cedar_policy::Request, Entities), String> {
    let (uid, ents) = principal_entities(names, principal)?;
    Ok((build_request(names, &uid, input)?, ents))
}

/// What the user's Cedar policies said about one request.
#[derive(Debug, Default, Clone)]
pub(crate) struct CedarOutcome {
    pub forbid: Option<(PolicyId, bool)>,
    pub permit: Option<PolicyId>,
}

pub(crate) fn evaluate(
    user: &UserCedar,
    set: &PolicySet,
    req: &cedar_policy::Request,
    entities: &Entities,
) -> CedarOutcome {
    let resp = Authorizer::new().is_authorized(req, set, entities);
    let mut out = CedarOutcome::default();
    let mut reasons: Vec<&PolicyId> = resp.diagnostics().reason().collect();
    reasons.sort_by_key(|id| user.rules.get(*id).map(|r| (r.file.clone(), r.line)));
    match resp.decision() {
        CedarDecision::Allow => out.permit = reasons.first().map(|id| (*id).clone()),
        CedarDecision::Deny => out.forbid = reasons.first().map(|id| ((*id).clone(), false)),
    }
    // Fail closed: a forbid that could not be evaluated counts as matching.
    if out.forbid.is_none() {
        for e in resp.diagnostics().errors() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
            let id = pe.policy_id();
            if user
                .rules
                .get(id)
                .is_some_and(|r| r.effect == Effect::Forbid)
            {
                out.forbid = Some((id.clone(), true));
                out.permit = None;
                break;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// TOML → Cedar text

/// A Cedar string literal.
pub(crate) fn lit(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            '\0' => o.push_str("\\0"),
            c if c.is_control() => {
                let _ = write!(o, "\\u{{{:x}}}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A Cedar `like` pattern: `literal` text with `*` escaped, then `wild` parts as `*`.
fn like_lit(parts: &[(&str, bool)]) -> String {
    let mut inner = String::new();
    for (text, wild) in parts {
        if *wild {
            inner.push('*');
        } else {
            let l = lit(text);
            inner.push_str(&l[1..l.len() - 1].replace('*', "\\*"));
        }
    }
    format!("\"{inner}\"")
}

/// A glob (`*`, `**`, `?`, classes) as a `like` pattern: every wildcard becomes `*`.
/// Exact for `**` and for `*` in the last component; broader otherwise.
fn glob_like(glob: &str) -> String {
    let mut parts: Vec<(String, bool)> = Vec::new();
    let mut lit_buf = String::new();
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' | '?' => {
                while chars.peek() == Some(&'*') {
                    chars.next();
                }
                parts.push((std::mem::take(&mut lit_buf), false));
                parts.push((String::new(), true));
            }
            '[' => {
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                }
                parts.push((std::mem::take(&mut lit_buf), false));
                parts.push((String::new(), true));
            }
            '\\' => {
                if let Some(d) = chars.next() {
                    lit_buf.push(d);
                }
            }
            c => lit_buf.push(c),
        }
    }
    parts.push((lit_buf, false));
    let refs: Vec<(&str, bool)> = parts.iter().map(|(s, w)| (s.as_str(), *w)).collect();
    like_lit(&refs)
}

fn host_cond(kind: &HostKind, subject: &str) -> String {
    match kind {
        HostKind::Exact(h) => format!("{subject} == {}", lit(h)),
        HostKind::OneLabel(x) => format!(
            "!(context has ip) && {subject} like {} && !({subject} like {})",
            like_lit(&[("", true), (&format!(".{x}"), false)]),
            like_lit(&[
                ("", true),
                (".", false),
                ("", true),
                (&format!(".{x}"), false)
            ])
        ),
        HostKind::AnyDepth(x) => format!(
            "!(context has ip) && {subject} like {}",
            like_lit(&[("", true), (&format!(".{x}"), false)])
        ),
        HostKind::AnyName => "!(context has ip)".to_owned(),
        HostKind::Net(n) => format!(
            "context has ip && context.ip.isInRange(ip({}))",
            lit(&n.to_string())
        ),
    }
}

fn port_cond(p: PortSpec) -> Option<String> {
    match p {
        PortSpec::Web => Some("(context.port == 80 || context.port == 443)".into()),
        PortSpec::One(n) => Some(format!("context.port == {n}")),
        PortSpec::Any => None,
    }
}

fn and(parts: &[Option<String>]) -> String {
    let v: Vec<&str> = parts.iter().flatten().map(String::as_str).collect();
    if v.is_empty() {
        "true".into()
    } else {
        v.join(" && ")
    }
}

fn rule_ann(origin: &str, line: u32) -> String {
    format!("@rule({})\n", lit(&format!("{origin}:{line}")))
}

const NET_ACTIONS: &str = "action in [Warden::Action::\"connect\", Warden::Action::\"http\"]";

fn http_path_cond(glob: &str) -> String {
    if let Some(prefix) = glob.strip_suffix("/**")
        && !prefix.contains(['*', '?', '['])
    {
        return format!(
            "(context.path == {} || context.path like {})",
            lit(prefix),
            like_lit(&[(&format!("{prefix}/"), false), ("", true)])
        );
    }
    if glob.contains("**") {
        return format!("context.path like {}", glob_like(glob));
    }
    // `*` never crosses `/`: same number of separators makes `like` exact.
    format!(
        "(context.path like {} && context.path_depth == {})",
        glob_like(glob),
        glob.matches('/').count()
    )
}

fn http_rule_cond(r: &crate::doc::HttpRule) -> String {
    let methods = if r.methods.is_empty() {
        None
    } else {
        let list: Vec<String> = r.methods.iter().map(|m| lit(m)).collect();
        Some(format!("[{}].contains(context.method)", list.join(", ")))
    };
    let paths = if r.paths.is_empty() {
        None
    } else {
        let list: Vec<String> = r.paths.iter().map(|p| http_path_cond(p)).collect();
        Some(format!("({})", list.join(" || ")))
    };
    and(&[
        Some(format!("({})", host_cond(&r.host.kind, "context.host"))),
        methods,
        paths,
    ])
}

/// Filesystem `in pattern` condition on the Path entity, and `root strictly below
/// pattern` on the context.
fn fs_pattern_conds(pat: &str) -> (String, String) {
    if pat == "~" {
        return (
            "(context.tilde == \"~\" || context.tilde like \"~/*\")".into(),
            "context.root_tilde like \"~/*\"".into(),
        );
    }
    let (subject, root) = if pat.starts_with('~') {
        ("context.tilde", "context.root_tilde")
    } else {
        ("context.path", "context.root")
    };
    let pat = pat.trim_end_matches('/');
    let is_glob = pat.contains(['*', '?', '[']);
    let below = if is_glob {
        glob_like(&format!("{pat}/*"))
    } else {
        like_lit(&[(&format!("{pat}/"), false), ("", true)])
    };
    let this = if is_glob {
        format!("{subject} like {}", glob_like(pat))
    } else {
        format!("{subject} == {}", lit(pat))
    };
    (
        format!("({this} || {subject} like {below})"),
        format!("{root} like {below}"),
    )
}

fn tilde_of(p: &Path) -> (String, &'static str) {
    let s = p.to_string_lossy().into_owned();
    if s.starts_with('~') {
        (s, "context.root_tilde")
    } else {
        (s, "context.root")
    }
}

/// The Cedar text the TOML tables compile to. Each policy carries `@rule("file:line")`.
pub(crate) fn compile(doc: &PolicyDoc, origin: &str, id: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "// Cedar compiled from {origin} ({id}); see SPEC §6 for the model."
    );
    let _ = writeln!(
        o,
        "// Warden decides these natively; this text is for reading and tools.\n"
    );
    let net = &doc.network;
    let emit_entries = |o: &mut String, list: &[HostEntry], effect: &str| {
        for e in list {
            let ports = if effect == "forbid" {
                port_cond(e.pattern.deny_ports())
            } else {
                port_cond(e.pattern.ports)
            };
            let _ = writeln!(
                o,
                "// network.{} \"{}\"\n{}{effect} (principal, {NET_ACTIONS}, resource is Warden::Host)\nwhen {{ {} }};\n",
                if effect == "forbid" { "deny" } else { "allow" },
                e.written.replace('\n', " "),
                rule_ann(origin, e.line),
                and(&[Some(host_cond(&e.pattern.kind, "context.host")), ports])
            );
        }
    };
    emit_entries(&mut o, &net.allow, "permit");
    emit_entries(&mut o, &net.deny, "forbid");
    let all_rules: Vec<String> = net.http.iter().map(http_rule_cond).collect();
    for r in &net.http {
        let ann = rule_ann(origin, r.line);
        let hp = and(&[
            Some(host_cond(&r.host.kind, "context.host")),
            port_cond(r.host.ports),
        ]);
        let _ = writeln!(
            o,
            "// [[network.http]] host \"{}\"\n{ann}permit (principal, action == Warden::Action::\"connect\", resource is Warden::Host)\nwhen {{ {hp} }};\n",
            r.host_written
        );
        let _ = writeln!(
            o,
            "{ann}permit (principal, action == Warden::Action::\"http\", resource is Warden::Host)\nwhen {{ context.path_ok && {} && {} }};\n",
            http_rule_cond(r),
            port_cond(r.host.ports).unwrap_or_else(|| "true".into())
        );
        let _ = writeln!(
            o,
            "{ann}forbid (principal, action == Warden::Action::\"http\", resource is Warden::Host)\nwhen {{ {} }}\nunless {{ context.path_ok && ({}) }};\n",
            host_cond(&r.host.kind, "context.host"),
            all_rules.join(" || ")
        );
    }

    let fs = &doc.filesystem;
    for (pat, line) in fs.deny.iter().zip(&fs.deny_lines) {
        let (this, below) = fs_pattern_conds(pat);
        let _ = writeln!(
            o,
            "// filesystem.deny \"{pat}\"\n{}forbid (principal, action == Warden::Action::\"mount\", resource is Warden::Path)\nwhen {{ {this} }}\nunless {{ {below} }};\n",
            rule_ann(origin, *line)
        );
    }
    let mode_cond = |ro: bool| ro.then(|| "context.mode == \"ro\"".to_owned());
    if fs.workspace != WorkspaceMode::None {
        let _ = writeln!(
            o,
            "// filesystem.workspace = \"{}\"\n{}permit (principal, action == Warden::Action::\"mount\", resource is Warden::Path)\nwhen {{ {} }};\n",
            if fs.workspace == WorkspaceMode::Ro {
                "ro"
            } else {
                "rw"
            },
            rule_ann(origin, fs.workspace_line),
            and(&[
                Some("context.root_kind == \"workspace\"".into()),
                mode_cond(fs.workspace == WorkspaceMode::Ro)
            ])
        );
    }
    for m in &fs.mounts {
        let (host, root) = tilde_of(&crate::fs::normalize_keep_tilde(&m.host));
        let _ = writeln!(
            o,
            "// [[filesystem.mounts]] host \"{host}\"\n{}permit (principal, action == Warden::Action::\"mount\", resource is Warden::Path)\nwhen {{ {} }};\n",
            rule_ann(origin, m.line),
            and(&[
                Some("context.root_kind == \"mount\"".into()),
                Some(format!("{root} == {}", lit(&host))),
                mode_cond(m.mode == MountMode::Ro)
            ])
        );
    }

    for c in &doc.credentials {
        for (h, line) in c.hosts.iter().zip(&c.host_lines) {
            let _ = writeln!(
                o,
                "// credential \"{}\" host \"{h}\"\n{}permit (principal, action == Warden::Action::\"use_credential\", resource == Warden::Credential::{})\nwhen {{ {} }};\n",
                c.name,
                rule_ann(origin, *line),
                lit(&c.name),
                host_cond(&h.kind, "context.host")
            );
        }
    }

    for s in &doc.mcp.servers {
        let server = format!("context.server == {}", lit(&s.name));
        match &s.tools_allow {
            None => {
                let _ = writeln!(
                    o,
                    "// MCP server \"{}\": every tool (no tools.allow)\n{}permit (principal, action == Warden::Action::\"call_tool\", resource is Warden::Tool)\nwhen {{ {server} }};\n",
                    s.name,
                    rule_ann(origin, s.line)
                );
            }
            Some(list) => {
                for (g, line) in list.iter().zip(&s.tools_allow_lines) {
                    let _ = writeln!(
                        o,
                        "{}permit (principal, action == Warden::Action::\"call_tool\", resource is Warden::Tool)\nwhen {{ {server} && context.tool like {} }};\n",
                        rule_ann(origin, *line),
                        star_like(g)
                    );
                }
            }
        }
        for (g, line) in s.tools_deny.iter().zip(&s.tools_deny_lines) {
            let _ = writeln!(
                o,
                "{}forbid (principal, action == Warden::Action::\"call_tool\", resource is Warden::Tool)\nwhen {{ {server} && context.tool like {} }};\n",
                rule_ann(origin, *line),
                star_like(g)
            );
        }
        let _ = writeln!(
            o,
            "// MCP server \"{}\": its prompts and resources (the policy format has no list for them)\n{}permit (principal, action in [Warden::Action::\"get_prompt\", Warden::Action::\"read_resource\"], resource)\nwhen {{ {server} }};\n",
            s.name,
            rule_ann(origin, s.line)
        );
    }
    o
}

/// Tool globs: `*` = any characters, everything else literal.
fn star_like(g: &str) -> String {
    let parts: Vec<(&str, bool)> = g
        .split('*')
        .enumerate()
        .flat_map(|(i, s)| {
            let head = (i > 0).then_some(("", true));
            head.into_iter().chain(std::iter::once((s, false)))
        })
        .collect();
    like_lit(&parts)
}
