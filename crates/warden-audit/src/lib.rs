//! Warden's audit trail: the [`Event`] type, a durable group-committing JSONL writer
//! ([`AuditLog`]), readers ([`read_events`], [`LogReader`]) and the [`Filter`] that
//! `warden audit` and, later, the control plane use to select events.
//!
//! What this crate owns: the on-disk format of SPEC §5 (one JSON object per line) and
//! the guarantee that an acknowledged event is on disk. [`AuditLog::record_durable`],
//! [`Ticket::wait`] and, in async code, the future of [`Ticket::durable`] return only
//! after the event was fsynced. [`AuditLog::record`] itself returns only after the
//! event's line is written to the file (a crash of the process can no longer lose it);
//! without waiting, it is fsynced within about 100 ms. A failed write or fsync is
//! reported to its caller, every waiter and every later call — it is never
//! acknowledged as if it had succeeded.
//!
//! What it must never do: hold a secret value. Every field of an event is built from
//! `&str` or a `serde_json::Value`, and `warden_secrets::Secret` converts into neither,
//! so passing a secret is a compile error, not a review finding:
//!
//! ```compile_fail
//! use warden_audit::{Event, Surface, Verdict};
//! let secret = warden_secrets::Secret::new(b"sk-live-123".to_vec());
//! let _ = Event::new(Surface::Credential, "inject", &secret, Verdict::Allow);
//! ```
//!
//! ```compile_fail
//! use warden_audit::{Event, Surface, Verdict};
//! let secret = warden_secrets::Secret::new(b"sk-live-123".to_vec());
//! let _ = Event::new(Surface::Credential, "inject", "api.example.com", Verdict::Allow)
//!     .field("x", secret);
//! ```
//!
//! The same calls with ordinary strings compile (this keeps the two examples above
//! honest: they fail because of the secret, not because of a typo):
//!
//! ```
//! use warden_audit::{Event, Surface, Verdict};
//! let _secret = warden_secrets::Secret::new(b"sk-live-123".to_vec());
//! let _ = Event::new(Surface::Credential, "inject", "api.example.com", Verdict::Allow)
//!     .rule("policy.toml:40")
//!     .field("x", "anthropic");
//! ```
//!
//! Writing an event:
//!
//! ```
//! use warden_audit::{AuditLog, Event, Stamp, Surface, Verdict};
//! # fn main() -> Result<(), warden_audit::AuditError> {
//! # let dir = tempfile::tempdir().map_err(|e| warden_audit::AuditError::Open {
//! #     path: "tmp".into(), source: e })?;
//! let log = AuditLog::open(&dir.path().join("audit.jsonl"))?;
//! let stamp = Stamp {
//!     session: "s-1".into(),
//!     machine: "m-1".into(),
//!     user: "alice".into(),
//!     policy: "team-default@3f2a".into(),
//! };
//! let deny = Event::new(Surface::Network, "connect", "uploads.github.com:443", Verdict::Deny)
//!     .rule("policy.toml:12")
//!     .reason("in network.deny");
//! // The session must not continue until the decision is on disk.
//! log.record_durable(&stamp, deny)?;
//! # Ok(()) }
//! ```

mod error;
mod event;
mod filter;
mod log;
mod read;

pub use error::{AuditError, ParseValueError};
pub use event::{Event, Stamp, Surface, Verdict, format_time, new_id};
pub use filter::{Filter, parse_since};
pub use log::{AuditLog, Durable, Ticket};
pub use read::{Entry, LogReader, ReadReport, Skipped, read_events};

/// Re-exported because [`Event::time`] and [`Filter::since`] use it.
pub use time::OffsetDateTime;
