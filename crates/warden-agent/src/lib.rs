//! `warden-agent`: the node side of the control plane — `warden enroll`, `warden agent`
//! and `warden status`.
//!
//! What it owns, all under `WARDEN_HOME`:
//! - the machine identity: an ed25519 key pair made at enrollment (`agent/machine.key`,
//!   mode 0600; only the public key leaves the machine), the machine id (`machine-id`)
//!   and the pinned server key (`agent/identity.json`);
//! - the last good policy bundle (`agent/bundle.json`): every bundle is verified against
//!   the pinned key, must be issued to this machine and must not be older than the one
//!   held; anything else is rejected and the last good bundle stays in force;
//! - delivery of the audit spool (`audit.jsonl`): events are uploaded in batches and the
//!   cursor (`agent/audit.cursor`) advances only after the server acknowledged them, so
//!   an event is never lost; the server stores each id once, so none is duplicated;
//! - vault leases for a session ([`MachineVault`]: the control plane's vault when
//!   enrolled, else the local store).
//!
//! What it must never do: act on a bundle it could not verify, fall back to a weaker
//! policy when it has none (an enrolled machine without a good bundle fails closed),
//! send the private key anywhere, or write a leased secret to disk or a log.

mod error;
mod node;
mod session;
mod spool;
mod vault;

pub use error::AgentError;
pub use node::{
    AgentOptions, EnrolledPolicy, Identity, Node, PolicyInForce, Status, SyncOutcome,
    enrolled_policy,
};
pub use session::{
    DEFAULT_SPOOL_CAP, SPOOL_CAP_ENV, parse_size, reloaded_session_policy, session_policy,
    session_policy_with_cap, spool_cap, watched_bundle,
};
pub use spool::{Cursor, UploadReport};
pub use vault::{MachineVault, VAULT_TIMEOUT};
pub use warden_control::client::{Auth, Client};
