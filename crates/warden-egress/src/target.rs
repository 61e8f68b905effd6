//! Where a client wants to go: `host:port` parsed strictly from a CONNECT target, an
//! absolute URI's authority or a Host header.
//!
//! Strict on purpose: any byte that a URL parser, a resolver and the policy could read
//! differently (`@` userinfo, `\`, `%`-escapes, whitespace, control characters, NUL,
//! unbracketed IPv6) is an error, never a guess. Names come out canonical
//! (lowercase, no trailing dot, punycode) via `warden_policy::host`.

use std::fmt;
use std::net::IpAddr;
use warden_policy::host::{RequestHost, parse_request_host};

/// A destination: a canonical name or an address (IPv4-mapped IPv6 folded to IPv4),
/// and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: RequestHost,
    pub port: u16,
}

impl Target {
    pub fn new(host: RequestHost, port: u16) -> Target {
        Target { host, port }
    }

    /// A target for an address, folding IPv4-mapped IPv6 to IPv4.
    pub fn ip(ip: IpAddr, port: u16) -> Target {
        Target {
            host: RequestHost::Ip(ip.to_canonical()),
            port,
        }
    }

    /// The host as the policy reads it: a name, or an address without brackets.
    pub fn host_str(&self) -> String {
        self.host.to_string()
    }

    /// The name, when the target is one.
    pub fn name(&self) -> Option<&str> {
        match &self.host {
            RequestHost::Name(n) => Some(n),
            RequestHost::Ip(_) => None,
        }
    }
}

impl fmt::Display for Target {
    /// `host:port`, IPv6 in brackets: the form `[network] allow` entries take.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            RequestHost::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
            h => write!(f, "{h}:{}", self.port),
        }
    }
}

/// Why a target could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// a byte no host may contain
    #[error("`{0}`: {1} is not allowed in a proxy target")]
    BadChar(String, &'static str),
    /// missing or bad port
    #[error("`{0}`: expected host:port with a port from 1 to 65535")]
    BadPort(String),
    /// unbracketed IPv6 or stray brackets
    #[error("`{0}`: IPv6 addresses must be written in brackets, e.g. [2001:db8::1]:443")]
    Brackets(String),
    /// the host part is not a valid name or address
    #[error("`{0}`: {1}")]
    Host(String, String),
}

/// Parse `host[:port]`. `default_port` is used when no port is written; `None`
/// makes the port mandatory (CONNECT).
pub fn parse_authority(s: &str, default_port: Option<u16>) -> Result<Target, TargetError> {
    let bad = |what| Err(TargetError::BadChar(printable(s), what));
    for c in s.chars() {
        match c {
            '\0' => return bad("a NUL byte"),
            c if c.is_control() => return bad("a control character"),
            c if c.is_whitespace() => return bad("whitespace"),
            '@' => return bad("userinfo (`@`)"),
            '\\' => return bad("a backslash"),
            '%' => return bad("percent-encoding"),
            '/' | '?' | '#' => return bad("a path, query or fragment"),
            _ => {}
        }
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(TargetError::Brackets(printable(s)));
        };
        if after.is_empty() {
            (format!("[{inner}]"), None)
        } else if let Some(p) = after.strip_prefix(':') {
            (format!("[{inner}]"), Some(p))
        } else {
            return Err(TargetError::Brackets(printable(s)));
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => {
                if p.contains(':') {
                    return Err(TargetError::Brackets(printable(s)));
                }
                (h.to_string(), Some(p))
            }
            None => (s.to_string(), None),
        }
    };
    let bracketed = s.starts_with('[');
    let inner = if bracketed {
        host.get(1..host.len().saturating_sub(1)).unwrap_or("")
    } else {
        host.as_str()
    };
    if inner.contains(['[', ']']) {
        return Err(TargetError::Brackets(printable(s)));
    }
    let port = match port {
        Some(p) => parse_port(p).ok_or_else(|| TargetError::BadPort(printable(s)))?,
        None => default_port.ok_or_else(|| TargetError::BadPort(printable(s)))?,
    };
    let host =
        parse_request_host(&host).map_err(|e| TargetError::Host(printable(s), e.to_string()))?;
    let v6_literal = inner.parse::<std::net::Ipv6Addr>().is_ok();
    if v6_literal != bracketed {
        return Err(TargetError::Brackets(printable(s)));
    }
    Ok(Target { host, port })
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n > 0)
}

/// A form of untrusted text safe to put in an error message or an audit field.
pub fn printable(s: &str) -> String {
    s.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn name(n: &str, port: u16) -> Target {
        Target::new(RequestHost::Name(n.into()), port)
    }

    #[test]
    fn canonical_names_and_ports() {
        assert_eq!(
            parse_authority("Allowed.TEST.:443", None),
            Ok(name("allowed.test", 443))
        );
        assert_eq!(
            parse_authority("allowed.test", Some(80)),
            Ok(name("allowed.test", 80))
        );
        assert_eq!(
            parse_authority("[::ffff:127.0.0.1]:80", None),
            Ok(Target::ip(IpAddr::V4(Ipv4Addr::LOCALHOST), 80))
        );
        assert_eq!(
            parse_authority("[2001:db8::1]:8443", None).map(|t| t.to_string()),
            Ok("[2001:db8::1]:8443".into())
        );
    }

    #[test]
    fn tricks_are_errors() {
        for bad in [
            "allowed.test@evil.test:443",
            "allowed.test\\@evil.test:443",
            "allowed%2etest:443",
            "allowed.test\0.evil:443",
            "allowed.test :443",
            "allowed.test",
            "allowed.test:0",
            "allowed.test:65536",
            "allowed.test:+443",
            "2001:db8::1:443",
            "[2001:db8::1:443",
            "a..b:443",
            "allowed.test/x:443",
            "[allowed.test]:443",
        ] {
            assert!(parse_authority(bad, None).is_err(), "{bad:?} parsed");
        }
    }
}
