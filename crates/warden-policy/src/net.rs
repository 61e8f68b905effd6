//! Native evaluation of the network tables: host indexes (hash lookups per label, not
//! a scan over entries), URL parsing and HTTP path normalization.

use std::collections::HashMap;

use ipnet::IpNet;

use crate::host::{HostKind, HostPattern, PortSpec, RequestHost, parse_request_host};

/// One compiled entry: which ports, and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub ports: PortSpec,
    pub line: u32,
    pub written: String,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct HostIndex {
    exact: HashMap<String, Vec<Entry>>,
    one_label: HashMap<String, Vec<Entry>>,
    any_depth: HashMap<String, Vec<Entry>>,
    any_name: Vec<Entry>,
    nets: Vec<(IpNet, Entry)>,
}

fn pick(list: Option<&Vec<Entry>>, port: Option<u16>) -> Option<&Entry> {
    let list = list?;
    match port {
        Some(p) => list.iter().find(|e| e.ports.matches(p)),
        None => list.first(),
    }
}

impl HostIndex {
    pub fn insert(&mut self, p: &HostPattern, entry: Entry) {
        match &p.kind {
            HostKind::Exact(h) => self.exact.entry(h.clone()).or_default().push(entry),
            HostKind::OneLabel(s) => self.one_label.entry(s.clone()).or_default().push(entry),
            HostKind::AnyDepth(s) => self.any_depth.entry(s.clone()).or_default().push(entry),
            HostKind::AnyName => self.any_name.push(entry),
            HostKind::Net(n) => self.nets.push((*n, entry)),
        }
    }

    /// The most specific entry admitting `host:port`: exact, then one-label, then the
    /// deepest `**.` suffix, then `*`. `port = None` ignores ports.
    pub fn find(&self, host: &RequestHost, port: Option<u16>) -> Option<&Entry> {
        match host {
            RequestHost::Ip(ip) => {
                // The narrowest network wins so the rule shown is the most specific.
                self.nets
                    .iter()
                    .filter(|(n, e)| n.contains(ip) && port.is_none_or(|p| e.ports.matches(p)))
                    .max_by_key(|(n, e)| (n.prefix_len(), std::cmp::Reverse(e.line)))
                    .map(|(_, e)| e)
            }
            RequestHost::Name(name) => {
                if let Some(e) = pick(self.exact.get(name.as_str()), port) {
                    return Some(e);
                }
                let mut rest = name.as_str();
                let mut first = true;
                while let Some((_, parent)) = rest.split_once('.') {
                    if first && let Some(e) = pick(self.one_label.get(parent), port) {
                        return Some(e);
                    }
                    first = false;
                    if let Some(e) = pick(self.any_depth.get(parent), port) {
                        return Some(e);
                    }
                    rest = parent;
                }
                match port {
                    Some(p) => self.any_name.iter().find(|e| e.ports.matches(p)),
                    None => self.any_name.first(),
                }
            }
        }
    }

    /// The narrowest IP/CIDR entry containing `ip` on `port`.
    pub fn find_ip(&self, ip: std::net::IpAddr, port: u16) -> Option<&Entry> {
        self.find(&RequestHost::Ip(ip), Some(port))
    }
}

/// The parts of an absolute http(s) URL that decisions look at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Url {
    pub scheme: &'static str,
    pub host: RequestHost,
    pub port: u16,
    /// Normalized path (see [`normalize_http_path`]), or the raw path when it could not
    /// be normalized safely.
    pub path: String,
    /// False when the path hides a separator (`%2F`, `%5C`) or is not UTF-8 once
    /// decoded: such a path cannot be matched against globs safely.
    pub path_ok: bool,
}

pub(crate) fn parse_url(url: &str) -> Result<Url, String> {
    let (scheme, rest) = if let Some(r) = strip_prefix_ci(url, "https://") {
        ("https", r)
    } else if let Some(r) = strip_prefix_ci(url, "http://") {
        ("http", r)
    } else {
        return Err(format!("`{url}` is not an absolute http(s) URL"));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // Userinfo is dropped: the host is what follows the last `@`.
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = split_host_port(hostport)?;
    let port = match port {
        Some(p) => p,
        None if scheme == "https" => 443,
        None => 80,
    };
    let host = parse_request_host(host).map_err(|e| e.to_string())?;
    let raw_path = tail.split(['?', '#']).next().unwrap_or("");
    let raw_path = if raw_path.is_empty() { "/" } else { raw_path };
    let (path, path_ok) = match normalize_http_path(raw_path) {
        Some(p) => (p, true),
        None => (raw_path.to_owned(), false),
    };
    Ok(Url {
        scheme,
        host,
        port,
        path,
        path_ok,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn split_host_port(hp: &str) -> Result<(&str, Option<u16>), String> {
    let bad = || format!("`{hp}` is not a valid host[:port]");
    if hp.starts_with('[') {
        let close = hp.find(']').ok_or_else(bad)?;
        let host = &hp[..=close];
        let after = &hp[close + 1..];
        return match after.strip_prefix(':') {
            None if after.is_empty() => Ok((host, None)),
            Some(p) => Ok((host, Some(p.parse::<u16>().map_err(|_| bad())?))),
            None => Err(bad()),
        };
    }
    match hp.rsplit_once(':') {
        Some((h, "")) => Ok((h, None)),
        Some((h, p)) => Ok((h, Some(p.parse::<u16>().map_err(|_| bad())?))),
        None => Ok((hp, None)),
    }
}

/// Percent-decode, collapse repeated `/`, resolve `.` and `..` (never above `/`).
/// `None` when an encoded `/` or `\` hides a separator or the bytes are not UTF-8:
/// the upstream could split such a path differently from us.
pub(crate) fn normalize_http_path(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            let v = u8::from_str_radix(s, 16).ok()?;
            if v == b'/' || v == b'\\' || v == 0 {
                return None;
            }
            out.push(v);
            i += 3;
        } else if b == b'\\' {
            return None;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(out).ok()?;
    let mut segs: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let trailing = decoded.ends_with('/') && !segs.is_empty();
    let mut p = String::with_capacity(decoded.len() + 1);
    for s in &segs {
        p.push('/');
        p.push_str(s);
    }
    if p.is_empty() || trailing {
        p.push('/');
    }
    Some(p)
}

/// Match a normalized path against a path glob: `*` within one segment, `**` across
/// any number of segments; a trailing `/**` also matches the directory itself.
pub(crate) fn path_glob_matches(glob: &str, path: &str) -> bool {
    if let Some(prefix) = glob.strip_suffix("/**")
        && !prefix.contains('*')
    {
        return path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'));
    }
    wild(glob.as_bytes(), path.as_bytes())
}

fn wild(g: &[u8], s: &[u8]) -> bool {
    match g.first() {
        None => s.is_empty(),
        Some(b'*') if g.get(1) == Some(&b'*') => {
            let rest = &g[2..];
            // `/**/` may match a single `/`.
            if let Some(r) = rest.strip_prefix(b"/")
                && wild(r, s)
            {
                return true;
            }
            (0..=s.len()).any(|k| wild(rest, &s[k..]))
        }
        Some(b'*') => {
            let rest = &g[1..];
            let seg_end = s.iter().position(|&c| c == b'/').unwrap_or(s.len());
            (0..=seg_end).any(|k| wild(rest, &s[k..]))
        }
        Some(&c) => s.first() == Some(&c) && wild(&g[1..], &s[1..]),
    }
}

/// Glob with `*` = any characters (tool names).
pub(crate) fn star_matches(glob: &str, s: &str) -> bool {
    fn go(g: &[u8], s: &[u8]) -> bool {
        match g.first() {
            None => s.is_empty(),
            Some(b'*') => (0..=s.len()).any(|k| go(&g[1..], &s[k..])),
            Some(&c) => s.first() == Some(&c) && go(&g[1..], &s[1..]),
        }
    }
    go(glob.as_bytes(), s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_paths_normalize() {
        let n = |s| normalize_http_path(s);
        assert_eq!(n("/a/./b/../c").as_deref(), Some("/a/c"));
        assert_eq!(n("/a/%2e%2e/b").as_deref(), Some("/b"));
        assert_eq!(n("//a///b/").as_deref(), Some("/a/b/"));
        assert_eq!(n("/../../etc").as_deref(), Some("/etc"));
        assert_eq!(n("/%41bc").as_deref(), Some("/Abc"));
        assert_eq!(n("/a%2Fb"), None);
        assert_eq!(n("/a%5cb"), None);
        assert_eq!(n("/a\\b"), None);
        assert_eq!(n("/a%00"), None);
        assert_eq!(n("/a%ff"), None);
        assert_eq!(n("/a%zz"), None);
    }

    #[test]
    fn path_globs() {
        assert!(path_glob_matches("/repos/acme/**", "/repos/acme"));
        assert!(path_glob_matches("/repos/acme/**", "/repos/acme/x/y"));
        assert!(!path_glob_matches("/repos/acme/**", "/repos/acmex"));
        assert!(path_glob_matches("/users/*", "/users/octocat"));
        assert!(!path_glob_matches("/users/*", "/users/octocat/repos"));
        assert!(path_glob_matches("/a/**/b", "/a/b"));
        assert!(path_glob_matches("/a/**/b", "/a/x/y/b"));
        assert!(path_glob_matches("/v1/*/items", "/v1/x/items"));
        assert!(!path_glob_matches("/v1/*/items", "/v1/x/y/items"));
        assert!(star_matches("get_*", "get_issue"));
        assert!(!star_matches("get_*", "list_issue"));
    }

    #[test]
    fn urls() {
        let u = parse_url("HTTPS://user:pw@Api.GitHub.com./x/../y?q=1#f").unwrap();
        assert_eq!(u.host, RequestHost::Name("api.github.com".into()));
        assert_eq!((u.port, u.path.as_str(), u.scheme), (443, "/y", "https"));
        let u = parse_url("http://[::ffff:10.0.0.1]:8080").unwrap();
        assert_eq!(u.host, RequestHost::Ip("10.0.0.1".parse().unwrap()));
        assert_eq!((u.port, u.path.as_str()), (8080, "/"));
        assert!(parse_url("ftp://x.example/").is_err());
        assert!(parse_url("https://a b/").is_err());
        assert!(parse_url("https://x.example:99999/").is_err());
    }
}
