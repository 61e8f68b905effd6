use crate::error::ParseValueError;
use crate::event::{Event, Surface, Verdict};
use time::format_description::well_known::Rfc3339;
use time::{Date, Duration, OffsetDateTime};

/// Which events to show. Every field that is set must match; an empty filter matches
/// everything. Shared by `warden audit` and the control plane's audit API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub surface: Option<Surface>,
    pub decision: Option<Verdict>,
    pub session: Option<String>,
    pub machine: Option<String>,
    pub user: Option<String>,
    /// Events at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Events strictly before this time.
    pub until: Option<OffsetDateTime>,
}

impl Filter {
    pub fn matches(&self, event: &Event) -> bool {
        self.surface.is_none_or(|s| s == event.surface)
            && self.decision.is_none_or(|d| d == event.decision)
            && self.session.as_ref().is_none_or(|s| *s == event.session)
            && self.machine.as_ref().is_none_or(|m| *m == event.machine)
            && self.user.as_ref().is_none_or(|u| *u == event.user)
            && self.since.is_none_or(|t| event.time >= t)
            && self.until.is_none_or(|t| event.time < t)
    }
}

/// Parse a `--since` value relative to `now`: an RFC 3339 time
/// (`2026-11-30T03:00:00Z`), a date (`2026-11-30`, midnight UTC), or a duration ago:
/// a whole number followed by `s`, `m`, `h`, `d` or `w` (`90s`, `10m`, `2h`, `1d`).
pub fn parse_since(value: &str, now: OffsetDateTime) -> Result<OffsetDateTime, ParseValueError> {
    let err = || ParseValueError {
        what: "time",
        value: value.to_string(),
        expected: "an RFC 3339 time like 2026-11-30T03:00:00Z, a date like 2026-11-30, \
                   or a duration ago like 30s, 10m, 2h, 1d, 1w"
            .into(),
    };
    let v = value.trim();
    if let Ok(t) = OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(t);
    }
    if let Ok(d) = Date::parse(v, time::macros::format_description!("[year]-[month]-[day]")) {
        return Ok(d.midnight().assume_utc());
    }
    let split = v.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (digits, unit) = v.split_at(split);
    let n: i64 = digits.parse().map_err(|_| err())?;
    let ago = match unit {
        "s" => Some(Duration::seconds(n)),
        "m" => Some(Duration::minutes(n.min(i64::MAX / 60))),
        "h" => Some(Duration::hours(n.min(i64::MAX / 3600))),
        "d" => Some(Duration::days(n.min(i64::MAX / 86_400))),
        "w" => Some(Duration::weeks(n.min(i64::MAX / 604_800))),
        _ => None,
    }
    .ok_or_else(err)?;
    now.checked_sub(ago).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-30 12:00:00 UTC);

    #[test]
    fn since_accepts_rfc3339_dates_and_durations() {
        let p = |s| parse_since(s, NOW);
        assert_eq!(p("10m"), Ok(datetime!(2026-11-30 11:50:00 UTC)));
        assert_eq!(p("2h"), Ok(datetime!(2026-11-30 10:00:00 UTC)));
        assert_eq!(p("1d"), Ok(datetime!(2026-11-29 12:00:00 UTC)));
        assert_eq!(p("30s"), Ok(datetime!(2026-11-30 11:59:30 UTC)));
        assert_eq!(p("1w"), Ok(datetime!(2026-11-23 12:00:00 UTC)));
        assert_eq!(
            p("2026-11-30T03:00:00.5+01:00"),
            Ok(datetime!(2026-11-30 02:00:00.5 UTC))
        );
        assert_eq!(p("2026-11-01"), Ok(datetime!(2026-11-01 00:00:00 UTC)));
    }

    #[test]
    fn since_rejects_garbage_naming_the_value() {
        for bad in [
            "",
            "yesterday",
            "10",
            "10x",
            "m",
            "-5m",
            "99999999999999999999d",
        ] {
            let err = parse_since(bad, NOW).unwrap_err();
            assert_eq!(err.value, bad);
            assert!(err.to_string().contains("10m"), "{err}");
        }
        // Absurd but well-formed values fail instead of overflowing.
        assert!(parse_since("9223372036854775807w", NOW).is_err());
    }

    #[test]
    fn filter_fields_all_must_match() {
        let mut e = Event::new(Surface::Network, "connect", "a.example:443", Verdict::Deny);
        e.session = "s1".into();
        e.time = datetime!(2026-11-30 11:00:00 UTC);
        assert!(Filter::default().matches(&e));
        let f = Filter {
            surface: Some(Surface::Network),
            decision: Some(Verdict::Deny),
            session: Some("s1".into()),
            since: Some(datetime!(2026-11-30 11:00:00 UTC)),
            ..Filter::default()
        };
        assert!(f.matches(&e));
        for miss in [
            Filter {
                surface: Some(Surface::Mcp),
                ..f.clone()
            },
            Filter {
                decision: Some(Verdict::Allow),
                ..f.clone()
            },
            Filter {
                session: Some("s2".into()),
                ..f.clone()
            },
            Filter {
                since: Some(datetime!(2026-11-30 11:00:00.000001 UTC)),
                ..f.clone()
            },
            Filter {
                until: Some(datetime!(2026-11-30 11:00:00 UTC)),
                ..f.clone()
            },
            Filter {
                machine: Some("m".into()),
                ..f.clone()
            },
        ] {
            assert!(!miss.matches(&e), "{miss:?}");
        }
    }
}
