use crate::error::ParseValueError;
use rand::TryRngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The control surface a decision was made on (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Surface {
    Session,
    Network,
    Filesystem,
    Credential,
    Mcp,
}

impl Surface {
    pub const ALL: [Surface; 5] = [
        Surface::Session,
        Surface::Network,
        Surface::Filesystem,
        Surface::Credential,
        Surface::Mcp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Surface::Session => "session",
            Surface::Network => "network",
            Surface::Filesystem => "filesystem",
            Surface::Credential => "credential",
            Surface::Mcp => "mcp",
        }
    }
}

impl fmt::Display for Surface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Surface {
    type Err = ParseValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Surface::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseValueError {
                what: "surface",
                value: s.to_string(),
                expected: "one of session, network, filesystem, credential, mcp".into(),
            })
    }
}

/// What the policy said. Serialized as the event's `decision` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = ParseValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Verdict::Allow, Verdict::Deny]
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseValueError {
                what: "decision",
                value: s.to_string(),
                expected: "one of allow, deny".into(),
            })
    }
}

/// Who and under which policy: the fields every event of one session shares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stamp {
    pub session: String,
    pub machine: String,
    pub user: String,
    /// `name@digest` of the policy in force.
    pub policy: String,
}

/// One audit event: one line of the log (SPEC §5).
///
/// Build it with [`Event::new`] and the builder methods at the point of decision; the
/// log fills `time`, `id` and the [`Stamp`] fields when it is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When the event was recorded, UTC, microsecond precision.
    #[serde(serialize_with = "ser_time", deserialize_with = "de_time")]
    pub time: OffsetDateTime,
    /// Unique across processes and machines; the control plane deduplicates on it.
    pub id: String,
    pub session: String,
    pub machine: String,
    pub user: String,
    pub surface: Surface,
    pub action: String,
    pub target: String,
    pub decision: Verdict,
    /// False in audit mode: the policy said deny but nothing was blocked.
    pub enforced: bool,
    /// What decided: `file:line`, or `default deny`. Empty when no rule applies (a
    /// session start, say).
    pub rule: String,
    pub reason: String,
    pub policy: String,
    /// Surface-specific details (`bytes_in`, `duration_ms`, `exit_status`, ...),
    /// written as top-level keys after the required ones.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The keys of SPEC §5 that every event has; [`Event::field`] never overwrites them.
const REQUIRED_KEYS: [&str; 13] = [
    "time", "id", "session", "machine", "user", "surface", "action", "target", "decision",
    "enforced", "rule", "reason", "policy",
];

impl Event {
    /// A new event. `enforced` defaults to true; `time` is now, and is replaced by
    /// the time of recording.
    pub fn new(surface: Surface, action: &str, target: &str, decision: Verdict) -> Event {
        Event {
            time: now_micros(),
            id: String::new(),
            session: String::new(),
            machine: String::new(),
            user: String::new(),
            surface,
            action: action.to_string(),
            target: target.to_string(),
            decision,
            enforced: true,
            rule: String::new(),
            reason: String::new(),
            policy: String::new(),
            extra: Map::new(),
        }
    }

    pub fn rule(mut self, rule: &str) -> Event {
        self.rule = rule.to_string();
        self
    }

    pub fn reason(mut self, reason: &str) -> Event {
        self.reason = reason.to_string();
        self
    }

    pub fn enforced(mut self, enforced: bool) -> Event {
        self.enforced = enforced;
        self
    }

    /// Add a surface-specific field. A key that collides with a required field is
    /// stored as `extra.<key>`, so a detail can never overwrite or duplicate what
    /// the policy decided.
    pub fn field(mut self, key: &str, value: impl Into<Value>) -> Event {
        let key = if REQUIRED_KEYS.contains(&key) {
            format!("extra.{key}")
        } else {
            key.to_string()
        };
        self.extra.insert(key, value.into());
        self
    }

    /// Fill the fields the log owns.
    pub(crate) fn stamp(&mut self, stamp: &Stamp) {
        self.time = now_micros();
        self.id = new_id();
        self.session.clone_from(&stamp.session);
        self.machine.clone_from(&stamp.machine);
        self.user.clone_from(&stamp.user);
        self.policy.clone_from(&stamp.policy);
    }
}

/// Now, truncated to microseconds so that what is written reads back equal.
fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let micros = now.microsecond();
    now.replace_microsecond(micros).unwrap_or(now)
}

const TIME_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

/// An event time as written in the log: RFC 3339, UTC, microseconds, `Z`.
pub fn format_time(t: OffsetDateTime) -> String {
    let utc = t.to_offset(time::UtcOffset::UTC);
    // Formatting a valid date with this fixed description cannot fail for years
    // 0..=9999; fall back to the well-known form rather than losing the event.
    utc.format(TIME_FORMAT)
        .or_else(|_| utc.format(&Rfc3339))
        .unwrap_or_else(|_| utc.unix_timestamp().to_string())
}

fn ser_time<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    OffsetDateTime::parse(&s, &Rfc3339)
        .map(|t| t.to_offset(time::UtcOffset::UTC))
        .map_err(serde::de::Error::custom)
}

/// A new event id: 26 characters of Crockford base32, a ULID — 48 bits of
/// milliseconds then 80 random bits — so ids sort by time and never collide across
/// processes or machines. The random bits come from the OS on every call: a
/// user-space generator would be duplicated into a forked child (rand 0.9's
/// `ThreadRng` does not reseed on fork) and the two would mint the same ids.
pub fn new_id() -> String {
    let millis = u128::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(0)
        & ((1 << 48) - 1);
    let mut random = [0u8; 16];
    if rand::rngs::OsRng.try_fill_bytes(&mut random).is_err() {
        // The OS generator failing is near impossible; a thread-local CSPRNG is still
        // unique between processes that did not fork from each other.
        random = rand::random();
    }
    let random = u128::from_be_bytes(random) & ((1 << 80) - 1);
    let mut value = (millis << 80) | random;
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 31) as usize];
        value >>= 5;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ulids_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 26);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn time_has_microseconds_and_z() {
        let t = time::macros::datetime!(2026-11-30 03:00:00.123456 UTC);
        assert_eq!(format_time(t), "2026-11-30T03:00:00.123456Z");
        let t = time::macros::datetime!(2026-11-30 04:00:00 +01:00);
        assert_eq!(format_time(t), "2026-11-30T03:00:00.000000Z");
    }

    #[test]
    fn field_never_shadows_a_required_key() {
        let e = Event::new(Surface::Mcp, "call_tool", "github/get_issue", Verdict::Deny)
            .field("decision", "allow")
            .field("bytes_in", 12);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["decision"], "deny");
        assert_eq!(json["extra.decision"], "allow");
        assert_eq!(json["bytes_in"], 12);
    }

    #[test]
    fn parse_surface_and_decision() {
        assert_eq!("MCP".parse::<Surface>(), Ok(Surface::Mcp));
        assert_eq!("deny".parse::<Verdict>(), Ok(Verdict::Deny));
        let err = "net".parse::<Surface>().unwrap_err().to_string();
        assert!(err.contains("`net`") && err.contains("filesystem"), "{err}");
        let err = "block".parse::<Verdict>().unwrap_err().to_string();
        assert!(
            err.contains("`block`") && err.contains("allow, deny"),
            "{err}"
        );
    }
}
