//! Host names, IP addresses, ports and the host-pattern syntax of `network.allow`,
//! `network.deny`, `[[network.http]] host` and `credentials.hosts`.
//!
//! Names are compared in canonical form only: lowercase, without the trailing dot,
//! internationalized names as punycode. Anything a resolver, a URL parser and this
//! module could read differently (`@`, `%`, `\`, spaces, control characters, numeric
//! last labels such as `2130706433` or `0x7f.1`) is rejected rather than guessed at.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};

/// Why a host name or host pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// the host name is empty
    #[error("the host name is empty")]
    Empty,
    /// a character that no host name may contain
    #[error("`{0}` contains {1}, which no host name may contain")]
    BadChar(String, &'static str),
    /// an empty label (`a..b`, a leading dot)
    #[error("`{0}` has an empty label")]
    EmptyLabel(String),
    /// IDNA conversion failed
    #[error("`{0}` is not a valid internationalized domain name")]
    Idna(String),
    /// a label longer than 63 bytes or a name longer than 253
    #[error("`{0}` is too long for a DNS name")]
    TooLong(String),
    /// numeric last label: resolvers read these as IPv4 addresses
    #[error("`{0}` looks like a number; resolvers would read it as an IPv4 address")]
    Numeric(String),
    /// a `*` anywhere but as the whole first label
    #[error("`{0}`: a wildcard may only be the whole first label (`*.` or `**.`)")]
    BadWildcard(String),
    /// bad port
    #[error("`{0}`: port must be a number from 1 to 65535 or `*`")]
    BadPort(String),
    /// bad IP address or CIDR
    #[error("`{0}` is not a valid IP address or CIDR")]
    BadIp(String),
    /// CIDR with bits set after the prefix
    #[error("CIDR `{0}` has host bits set (did you mean `{1}`?)")]
    HostBits(String, String),
}

/// Ports a pattern admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// Written without a port: 80 and 443.
    Web,
    One(u16),
    Any,
}

impl PortSpec {
    pub fn matches(self, port: u16) -> bool {
        match self {
            PortSpec::Web => port == 80 || port == 443,
            PortSpec::One(p) => p == port,
            PortSpec::Any => true,
        }
    }
}

/// What names or addresses a pattern covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostKind {
    /// `api.github.com`
    Exact(String),
    /// `*.githubusercontent.com`: exactly one extra label.
    OneLabel(String),
    /// `**.cdn.example.net`: one or more extra labels, never the apex.
    AnyDepth(String),
    /// `*`: any host *name* (never an IP literal).
    AnyName,
    /// An IP literal (as /32 or /128) or a CIDR. Never matches a name.
    Net(IpNet),
}

/// One entry of `network.allow`, `network.deny`, `credentials.hosts`, ...
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    pub kind: HostKind,
    pub ports: PortSpec,
}

/// The accepted forms, shown in hints of host pattern errors.
pub const PATTERN_FORMS: &str = "accepted forms: `api.example.com`, `*.example.com` (one extra label), \
`**.example.com` (any depth), `*` (any name), `host:8443`, `host:*`, `203.0.113.7`, `203.0.113.0/24`, \
`10.0.0.0/8:*`, `[2001:db8::1]:8443`, `2001:db8::/32`";

/// A host named in a request: a canonical name or an IP address
/// (IPv4-mapped IPv6 already folded to IPv4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestHost {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for RequestHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestHost::Name(n) => f.write_str(n),
            RequestHost::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Parse the host of a request: a name, an IPv4 literal, or an IPv6 literal with or
/// without brackets.
pub fn parse_request_host(host: &str) -> Result<RequestHost, HostError> {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = IpAddr::from_str(inner) {
        return Ok(RequestHost::Ip(ip.to_canonical()));
    }
    canonical_host(host).map(RequestHost::Name)
}

/// The canonical form of a host name: lowercase, no trailing dot, punycode.
/// Canonicalizing a canonical name returns it unchanged.
pub fn canonical_host(host: &str) -> Result<String, HostError> {
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    for c in host.chars() {
        let what = match c {
            '\0' => "a NUL byte",
            c if c.is_control() => "a control character",
            '@' => "`@`",
            ' ' => "a space",
            c if c.is_whitespace() => "whitespace",
            '\\' => "a backslash",
            '%' => "`%`",
            '/' => "`/`",
            ':' => "`:`",
            '*' => "`*`",
            '[' | ']' => "a bracket",
            '?' | '#' => "`?` or `#`",
            _ => continue,
        };
        return Err(HostError::BadChar(host.to_owned(), what));
    }
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    if trimmed.is_empty() || trimmed.split('.').any(str::is_empty) {
        return Err(HostError::EmptyLabel(host.to_owned()));
    }
    let ascii = idna::domain_to_ascii_cow(trimmed.as_bytes(), idna::AsciiDenyList::URL)
        .map_err(|_| HostError::Idna(host.to_owned()))?;
    // UTS 46 maps some characters to dots (e.g. U+3002), so check labels again.
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii);
    if ascii.is_empty() || ascii.split('.').any(str::is_empty) {
        return Err(HostError::EmptyLabel(host.to_owned()));
    }
    if ascii.len() > 253 || ascii.split('.').any(|l| l.len() > 63) {
        return Err(HostError::TooLong(host.to_owned()));
    }
    if !ascii
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
    {
        return Err(HostError::BadChar(
            host.to_owned(),
            "a character not allowed in DNS names",
        ));
    }
    let last = ascii.rsplit('.').next().unwrap_or(ascii);
    if is_numeric_label(last) && Ipv4Addr::from_str(ascii).is_err() {
        return Err(HostError::Numeric(host.to_owned()));
    }
    Ok(ascii.to_owned())
}

/// WHATWG URL's "ends in a number": decimal, or 0x-hex.
fn is_numeric_label(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .map(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
    hex.unwrap_or(false) || (!label.is_empty() && label.chars().all(|c| c.is_ascii_digit()))
}

fn parse_port(p: &str, whole: &str) -> Result<PortSpec, HostError> {
    if p == "*" {
        return Ok(PortSpec::Any);
    }
    if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) {
        return Err(HostError::BadPort(whole.to_owned()));
    }
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(PortSpec::One(n)),
        _ => Err(HostError::BadPort(whole.to_owned())),
    }
}

/// Parse an address or CIDR; IPv4-mapped IPv6 folds to IPv4 so that
/// `[::ffff:10.0.0.1]` and `10.0.0.1` are the same entry.
fn parse_net(s: &str, whole: &str) -> Result<IpNet, HostError> {
    let net = if s.contains('/') {
        let net = IpNet::from_str(s).map_err(|_| HostError::BadIp(whole.to_owned()))?;
        if net.network() != net.addr() {
            return Err(HostError::HostBits(s.to_owned(), net.trunc().to_string()));
        }
        net
    } else {
        let ip = IpAddr::from_str(s).map_err(|_| HostError::BadIp(whole.to_owned()))?;
        IpNet::from(ip)
    };
    Ok(fold_mapped(net))
}

fn fold_mapped(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n);
    }
    net
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, HostError> {
        if s.is_empty() {
            return Err(HostError::Empty);
        }
        // Bracketed IPv6: `[addr]`, `[addr]:port`, `[net/len]:*`.
        if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| HostError::BadIp(s.to_owned()))?;
            let ports = match after {
                "" => PortSpec::Web,
                _ => match after.strip_prefix(':') {
                    Some(p) => parse_port(p, s)?,
                    None => return Err(HostError::BadPort(s.to_owned())),
                },
            };
            if !inner.contains(':') {
                return Err(HostError::BadIp(s.to_owned()));
            }
            return Ok(HostPattern {
                kind: HostKind::Net(parse_net(inner, s)?),
                ports,
            });
        }
        // Unbracketed IPv6 (more than one colon) never carries a port.
        if s.matches(':').count() > 1 {
            return Ok(HostPattern {
                kind: HostKind::Net(parse_net(s, s)?),
                ports: PortSpec::Web,
            });
        }
        let (host, ports) = match s.split_once(':') {
            Some((h, p)) => (h, parse_port(p, s)?),
            None => (s, PortSpec::Web),
        };
        if host == "*" {
            return Ok(HostPattern {
                kind: HostKind::AnyName,
                ports,
            });
        }
        // A `/` makes a CIDR only after an address; elsewhere it is a bad name.
        let addr_part = host.split_once('/').map_or(host, |(a, _)| a);
        let looks_ip = Ipv4Addr::from_str(addr_part).is_ok();
        if looks_ip {
            return Ok(HostPattern {
                kind: HostKind::Net(parse_net(host, s)?),
                ports,
            });
        }
        let kind = if let Some(rest) = host.strip_prefix("**.") {
            HostKind::AnyDepth(wild_suffix(rest, s)?)
        } else if let Some(rest) = host.strip_prefix("*.") {
            HostKind::OneLabel(wild_suffix(rest, s)?)
        } else if host.contains('*') {
            return Err(HostError::BadWildcard(s.to_owned()));
        } else {
            HostKind::Exact(canonical_host(host)?)
        };
        Ok(HostPattern { kind, ports })
    }

    /// Does this pattern admit `host` (a name or an IP literal) on `port`?
    /// Unparseable hosts match nothing.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        match parse_request_host(host) {
            Ok(h) => self.matches_host(&h, port),
            Err(_) => false,
        }
    }

    /// Like [`HostPattern::matches`] for an already-canonical request host.
    pub fn matches_host(&self, host: &RequestHost, port: u16) -> bool {
        self.ports.matches(port) && self.kind.matches_host(host)
    }

    /// The same pattern with "no port given" widened to every port: a deny entry
    /// without a port denies all ports.
    pub fn deny_ports(&self) -> PortSpec {
        match self.ports {
            PortSpec::Web => PortSpec::Any,
            p => p,
        }
    }
}

impl HostKind {
    pub fn matches_host(&self, host: &RequestHost) -> bool {
        match (self, host) {
            (HostKind::Net(net), RequestHost::Ip(ip)) => net.contains(ip),
            (HostKind::Net(_), RequestHost::Name(_)) | (_, RequestHost::Ip(_)) => false,
            (HostKind::AnyName, RequestHost::Name(_)) => true,
            (HostKind::Exact(e), RequestHost::Name(n)) => e == n,
            (HostKind::OneLabel(sfx), RequestHost::Name(n)) => {
                n.split_once('.').is_some_and(|(_, parent)| parent == sfx)
            }
            (HostKind::AnyDepth(sfx), RequestHost::Name(n)) => {
                n.len() > sfx.len() + 1
                    && n.ends_with(sfx.as_str())
                    && n.as_bytes().get(n.len() - sfx.len() - 1) == Some(&b'.')
            }
        }
    }
}

fn wild_suffix(rest: &str, whole: &str) -> Result<String, HostError> {
    if rest.contains('*') {
        return Err(HostError::BadWildcard(whole.to_owned()));
    }
    canonical_host(rest)
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Web => Ok(()),
            PortSpec::One(p) => write!(f, ":{p}"),
            PortSpec::Any => f.write_str(":*"),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            HostKind::Exact(h) => write!(f, "{h}{}", self.ports),
            HostKind::OneLabel(h) => write!(f, "*.{h}{}", self.ports),
            HostKind::AnyDepth(h) => write!(f, "**.{h}{}", self.ports),
            HostKind::AnyName => write!(f, "*{}", self.ports),
            HostKind::Net(net) => {
                let single = net.prefix_len() == net.max_prefix_len();
                match (net, single) {
                    (IpNet::V4(n), true) => write!(f, "{}{}", n.addr(), self.ports),
                    (IpNet::V4(n), false) => write!(f, "{n}{}", self.ports),
                    (IpNet::V6(n), true) => write!(f, "[{}]{}", n.addr(), self.ports),
                    (IpNet::V6(n), false) => write!(f, "[{n}]{}", self.ports),
                }
            }
        }
    }
}

impl FromStr for HostPattern {
    type Err = HostError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostPattern::parse(s)
    }
}

fn v4net(a: [u8; 4], len: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(a), len).unwrap_or_default()
}

/// The special-purpose range an address belongs to, if any: the addresses a name
/// must never silently resolve to. IPv6 spellings that embed an IPv4 address
/// (IPv4-mapped, IPv4-compatible, NAT64 64:ff9b::/96 and 64:ff9b:1::/48, 6to4
/// 2002::/16, Teredo 2001::/32) are unwrapped and judged by that address.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if matches!(
        o,
        [169, 254, 169, 254] | [168, 63, 129, 16] | [100, 100, 100, 200]
    ) {
        return Some("cloud metadata");
    }
    let table: [(Ipv4Net, &'static str); 12] = [
        (v4net([0, 0, 0, 0], 8), "unspecified (0.0.0.0/8)"),
        (v4net([127, 0, 0, 0], 8), "loopback"),
        (v4net([10, 0, 0, 0], 8), "private (RFC 1918)"),
        (v4net([172, 16, 0, 0], 12), "private (RFC 1918)"),
        (v4net([192, 168, 0, 0], 16), "private (RFC 1918)"),
        (v4net([100, 64, 0, 0], 10), "shared address space (CGNAT)"),
        (v4net([169, 254, 0, 0], 16), "link-local"),
        (v4net([224, 0, 0, 0], 4), "multicast"),
        (v4net([240, 0, 0, 0], 4), "reserved"),
        (v4net([192, 0, 0, 0], 24), "IETF protocol assignments"),
        (v4net([198, 18, 0, 0], 15), "benchmarking"),
        (v4net([192, 88, 99, 0], 24), "6to4 relay anycast"),
    ];
    table
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, name)| *name)
}

fn embedded_v4(bits: u128, shift: u32) -> Ipv4Addr {
    Ipv4Addr::from(((bits >> shift) & 0xffff_ffff) as u32)
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4);
    }
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Some("cloud metadata");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    let bits = u128::from(ip);
    let seg = ip.segments();
    // IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks).
    if bits >> 32 == 0 {
        return special_v4(embedded_v4(bits, 0));
    }
    // NAT64 well-known prefix 64:ff9b::/96 embeds the IPv4 address in the low 32 bits;
    // the local-use prefix 64:ff9b:1::/48 is private by definition.
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return special_v4(embedded_v4(bits, 0));
    }
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1 {
        return Some("NAT64 local-use");
    }
    // 6to4: 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD.
    if seg[0] == 0x2002 {
        return special_v4(embedded_v4(bits, 80));
    }
    // Teredo 2001:0::/32: server IPv4 in bits 64..96, client IPv4 inverted in the low 32.
    if seg[0] == 0x2001 && seg[1] == 0 {
        let server = embedded_v4(bits, 64);
        let client = Ipv4Addr::from(!((bits & 0xffff_ffff) as u32));
        return special_v4(client).or_else(|| special_v4(server));
    }
    let ranges: [(u16, u16, &'static str); 5] = [
        (0xfe00, 0xfc00, "unique local (ULA)"),
        (0xffc0, 0xfe80, "link-local"),
        (0xffc0, 0xfec0, "site-local"),
        (0xff00, 0xff00, "multicast"),
        (0xffff, 0x0100, "discard-only"),
    ];
    ranges
        .iter()
        .find(|(mask, val, _)| seg[0] & mask == *val && (*val != 0x0100 || seg[1..4] == [0, 0, 0]))
        .map(|(_, _, name)| *name)
}
