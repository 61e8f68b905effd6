//! What `warden run` asks before a session starts on this machine: which policy is in
//! force, and whether the audit spool still has room.
//!
//! The rule for central and local policy (documented in docs/control-plane.md):
//! - not enrolled: the local `--policy` file applies (or, without one, the caller's
//!   built-in preset — [`session_policy`] returns `None`);
//! - enrolled: the policy from the last verified bundle is the one in force, and a local
//!   `--policy` file only narrows it (`Policy::narrowed_by`: a request is allowed only
//!   when both allow it). A local file that asks for more than the central policy grants
//!   (a mount, credential or MCP server it lacks) refuses the session with a message
//!   naming the entry. Central denies therefore always win, and a local file can never
//!   widen what the control plane allows;
//! - a running session re-applies the same local policy (as compiled at its start) to
//!   every new central policy ([`reloaded_session_policy`]); when that fails, the session
//!   moves to a policy that denies everything and says why (fail closed);
//! - enrolled with no verified bundle, a bundle assigning no policy, or a spool whose
//!   undelivered part has reached its cap: the session is refused (fail closed, and no
//!   audit event is ever dropped to make room).

use crate::error::AgentError;
use crate::node::{EnrolledPolicy, Node, PolicyInForce};
use std::path::Path;
use warden_policy::Policy;

/// Default cap on the undelivered part of the audit spool: 1 GiB.
pub const DEFAULT_SPOOL_CAP: u64 = 1 << 30;

/// Environment variable overriding the spool cap: bytes, or a number with a `K`, `M`
/// or `G` suffix (binary units).
pub const SPOOL_CAP_ENV: &str = "WARDEN_SPOOL_CAP";

/// Parse a spool cap such as `1048576`, `512M` or `2G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            format!("{SPOOL_CAP_ENV}={text:?}: expected a positive size like 268435456, 256M or 1G")
        })
}

/// The spool cap in force: `WARDEN_SPOOL_CAP` when set, else [`DEFAULT_SPOOL_CAP`].
pub fn spool_cap() -> Result<u64, AgentError> {
    match std::env::var(SPOOL_CAP_ENV) {
        Ok(v) => parse_size(&v).map_err(AgentError::Config),
        Err(_) => Ok(DEFAULT_SPOOL_CAP),
    }
}

/// The policy a new session on this machine must run under (see the module docs for
/// the rule), with the spool cap from [`spool_cap`].
///
/// `Ok(None)`: not enrolled and no local file — the caller uses its built-in preset.
/// `Err`: the session must not start; the message says why and what to do.
pub fn session_policy(home: &Path, local: Option<&Path>) -> Result<Option<Policy>, AgentError> {
    session_policy_with_cap(home, local, spool_cap()?)
}

/// [`session_policy`] with an explicit spool cap in bytes.
pub fn session_policy_with_cap(
    home: &Path,
    local: Option<&Path>,
    cap: u64,
) -> Result<Option<Policy>, AgentError> {
    let load_local = |p: &Path| Policy::load(p).map_err(|e| AgentError::Policy(e.to_string()));
    let node = Node::new(home);
    let central = match node.policy_in_force()? {
        PolicyInForce::Standalone => return local.map(load_local).transpose(),
        PolicyInForce::Central(p) => p,
        PolicyInForce::Unassigned { serial } => {
            return Err(AgentError::NoBundle(format!(
                "the control plane assigns no policy to this machine (serial {serial})"
            )));
        }
        PolicyInForce::None { reason } => return Err(AgentError::NoBundle(reason)),
    };
    let pending = node.spool_pending_bytes();
    if pending >= cap {
        return Err(AgentError::SpoolFull {
            spool: node.spool_path().to_path_buf(),
            pending,
            cap,
        });
    }
    let policy = compile_central(home, &central)?;
    match local {
        None => Ok(Some(policy)),
        Some(path) => {
            let l = load_local(path)?;
            policy.narrowed_by(&l).map(Some).map_err(|e| {
                AgentError::Policy(format!(
                    "this machine is enrolled and the control plane's policy {} ({}) is in \
                     force; the local policy {} can only narrow it, but it asks for more:\n{e}",
                    policy.id(),
                    central.origin(),
                    path.display(),
                ))
            })
        }
    }
}

/// Compile the central policy of a verified bundle.
fn compile_central(home: &Path, central: &EnrolledPolicy) -> Result<Policy, AgentError> {
    // Nothing relative may resolve for a central policy: the server validated it
    // against an empty directory, and so does the node.
    let base = home.join("agent").join("central-policy-root");
    let origin = format!("central:{}@v{}", central.name, central.version);
    Policy::parse(&central.source, &origin, &base).map_err(|e| {
        AgentError::Policy(format!(
            "the central policy {} does not compile on this machine (is this warden \
             older than the server?): {e}",
            central.id
        ))
    })
}

/// The file a running session on an enrolled machine watches: the agent replaces it
/// (atomically) with every new verified bundle. `None` when this machine is not
/// enrolled (a session then follows its local `--policy` file, if any).
pub fn watched_bundle(home: &Path) -> Option<std::path::PathBuf> {
    let node = Node::new(home);
    matches!(node.identity(), Ok(Some(_))).then(|| node.bundle_path())
}

/// For a running session on an enrolled machine, after the bundle changed: the central
/// policy of the verified bundle now held, narrowed by `local` — the session's local
/// policy as compiled when it started (`Policy::narrowing` of its start policy), so the
/// same local file keeps applying. The spool cap is not checked (it decides whether a
/// session may start, not which rules a running one follows).
///
/// When `local` asks for more than the new central policy grants, the result is a
/// `Policy::refused` one (id `<central id>+<local id>#refused`) that denies every
/// request with the reason: never wider than the new central policy (fail closed). The
/// caller should show `Policy::refusal`.
///
/// `Err` when there is no policy to move to (no verified bundle, or none assigned to
/// this machine): the caller keeps the policy in force and says why.
pub fn reloaded_session_policy(home: &Path, local: Option<&Policy>) -> Result<Policy, AgentError> {
    match Node::new(home).policy_in_force()? {
        PolicyInForce::Central(p) => {
            let central = compile_central(home, &p)?;
            let Some(local) = local else {
                return Ok(central);
            };
            Ok(central.narrowed_by(local).unwrap_or_else(|e| {
                Policy::refused(
                    format!("{}+{}#refused", central.id(), local.id()),
                    format!("{} narrowed by {}", central.origin(), local.origin()),
                    format!(
                        "the local policy {} no longer narrows the central policy {} ({}): \
                         {}; everything is denied until the session is restarted",
                        local.origin(),
                        central.id(),
                        central.origin(),
                        e.diagnostics()
                            .iter()
                            .map(|d| d.message.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                )
            }))
        }
        PolicyInForce::Standalone => Err(AgentError::NoBundle(
            "this machine is no longer enrolled".into(),
        )),
        PolicyInForce::Unassigned { serial } => Err(AgentError::NoBundle(format!(
            "the control plane assigns no policy to this machine (serial {serial})"
        ))),
        PolicyInForce::None { reason } => Err(AgentError::NoBundle(reason)),
    }
}
