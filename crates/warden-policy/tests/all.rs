//! Integration tests for warden-policy, as one binary.

// Test helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use warden_policy::*;

fn principal() -> Principal {
    Principal {
        session: "s-1".into(),
        user: "alice".into(),
        machine: "m-1".into(),
        agent: "claude".into(),
        labels: [("team".to_owned(), "infra".to_owned())]
            .into_iter()
            .collect(),
    }
}

/// The line of `src` that contains `needle` (exactly once).
fn line_of(src: &str, needle: &str) -> u32 {
    let hits: Vec<usize> = src
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(hits.len(), 1, "`{needle}` must appear once, found {hits:?}");
    hits[0] as u32
}

mod snapshots {
    use super::*;

    /// Every file in tests/bad must fail to load; its rendered errors are snapshots.
    #[test]
    fn bad_policies() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        assert!(files.len() >= 15, "need at least 15 bad policies");
        for f in files {
            let name = f.file_stem().unwrap().to_string_lossy().into_owned();
            let err = match Policy::load(&f) {
                Ok(_) => panic!("{name} should not load"),
                Err(e) => e,
            };
            assert!(!err.diagnostics().is_empty());
            insta::assert_snapshot!(name, err.to_string());
        }
    }

    #[test]
    fn several_errors_are_all_reported() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
        let err = Policy::load(&dir.join("several.toml")).unwrap_err();
        assert!(err.diagnostics().len() >= 7, "{err}");
    }

    #[test]
    fn unknown_key_hint_names_the_nearest_key() {
        let err = Policy::parse(
            "version = 1\n[network]\nalow = [\"api.github.com\"]\n",
            "policy.toml",
            Path::new("."),
        )
        .unwrap_err();
        let d = &err.diagnostics()[0];
        assert_eq!((d.line, d.col), (3, 1));
        assert_eq!(d.hint.as_deref(), Some("did you mean `allow`?"));
        assert_eq!(
            err.to_string(),
            "policy.toml:3:1: error: unknown key `alow` in [network]\n  |\n3 | alow = [\"api.github.com\"]\n  | ^^^^\n  = hint: did you mean `allow`?\n"
        );
    }

    #[test]
    fn sandbox_backend_is_parsed_with_its_line_and_checked() {
        let p = Policy::parse(
            "version = 1\n[sandbox]\nbackend = \"gvisor\"\n",
            "policy.toml",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            p.doc().sandbox.backend,
            warden_policy::SandboxBackend::Gvisor
        );
        assert_eq!(p.doc().sandbox.backend_line, 3);
        let p = Policy::parse("version = 1\n", "policy.toml", Path::new(".")).unwrap();
        assert_eq!(
            p.doc().sandbox.backend,
            warden_policy::SandboxBackend::Namespaces
        );
        let err = Policy::parse(
            "version = 1\n[sandbox]\nbackend = \"firecracker\"\nbakend = 1\n",
            "policy.toml",
            Path::new("."),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("unknown sandbox backend `firecracker`") && text.contains("\"gvisor\""),
            "{text}"
        );
        assert!(text.contains("did you mean `backend`?"), "{text}");
    }
}

mod hosts {
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use warden_policy::host::*;

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?".prop_filter("not numeric", |l| {
            // Numeric labels (decimal or 0x-hex) are rejected by design: resolvers read
            // them as IPv4 addresses.
            let hex = l
                .strip_prefix("0x")
                .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
            !l.chars().all(|c| c.is_ascii_digit()) && !hex && !l.starts_with("xn--")
        })
    }

    fn name(min: usize, max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(label(), min..=max).prop_map(|v| v.join("."))
    }

    proptest! {
        #[test]
        fn canonicalization_is_idempotent(n in name(1, 5)) {
            let c = canonical_host(&n).unwrap();
            prop_assert_eq!(canonical_host(&c).unwrap(), c.clone());
        }

        #[test]
        fn case_and_trailing_dot_do_not_matter(n in name(1, 5), dot in any::<bool>(), mask in any::<u64>()) {
            let mixed: String = n.chars().enumerate().map(|(i, c)| {
                if mask >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c }
            }).collect();
            let written = if dot { format!("{mixed}.") } else { mixed };
            prop_assert_eq!(canonical_host(&written).unwrap(), n.clone());
            let p = HostPattern::parse(&n).unwrap();
            prop_assert!(p.matches(&written, 443));
        }

        #[test]
        fn one_label_wildcard_is_exactly_one_label(base in name(1, 3), extra in prop::collection::vec(label(), 0..4)) {
            let p = HostPattern::parse(&format!("*.{base}")).unwrap();
            let host = if extra.is_empty() { base.clone() } else { format!("{}.{base}", extra.join(".")) };
            prop_assert_eq!(p.matches(&host, 443), extra.len() == 1);
        }

        #[test]
        fn any_depth_wildcard_never_matches_the_apex(base in name(1, 3), extra in prop::collection::vec(label(), 0..4)) {
            let p = HostPattern::parse(&format!("**.{base}")).unwrap();
            let host = if extra.is_empty() { base.clone() } else { format!("{}.{base}", extra.join(".")) };
            prop_assert_eq!(p.matches(&host, 443), !extra.is_empty());
            // A look-alike suffix is not a subdomain.
            let lookalike = format!("x{base}");
            prop_assert!(!p.matches(&lookalike, 443));
        }

        #[test]
        fn ports(n in name(1, 3), port in 1u16.., other in 1u16..) {
            let default = HostPattern::parse(&n).unwrap();
            prop_assert_eq!(default.matches(&n, other), other == 80 || other == 443);
            let one = HostPattern::parse(&format!("{n}:{port}")).unwrap();
            prop_assert_eq!(one.matches(&n, other), other == port);
            let any = HostPattern::parse(&format!("{n}:*")).unwrap();
            prop_assert!(any.matches(&n, other));
        }

        #[test]
        fn cidr_containment_agrees_with_ipnet(a in any::<u32>(), len in 0u8..=32, b in any::<u32>()) {
            let net = ipnet::Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
            let p = HostPattern::parse(&format!("{net}:*")).unwrap();
            let ip = Ipv4Addr::from(b);
            prop_assert_eq!(p.matches(&ip.to_string(), 1), net.contains(&ip));
            // Mapped spellings of the same address match the same way.
            prop_assert_eq!(p.matches(&format!("[{}]", ip.to_ipv6_mapped()), 1), net.contains(&ip));
        }

        #[test]
        fn cidr6_containment_agrees_with_ipnet(a in any::<u128>(), len in 0u8..=128, b in any::<u128>()) {
            let net = ipnet::Ipv6Net::new(Ipv6Addr::from(a), len).unwrap().trunc();
            prop_assume!(Ipv6Addr::from(b).to_ipv4_mapped().is_none());
            let p = HostPattern::parse(&format!("[{net}]:*")).unwrap();
            let ip = Ipv6Addr::from(b);
            prop_assert_eq!(p.matches(&format!("[{ip}]"), 9), net.contains(&ip));
        }

        #[test]
        fn special_ranges_survive_ipv6_spellings(v4 in any::<u32>()) {
            let ip = Ipv4Addr::from(v4);
            let expected = special_range(IpAddr::V4(ip));
            let o = ip.octets();
            let mapped = ip.to_ipv6_mapped();
            let nat64 = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, u16::from_be_bytes([o[0], o[1]]), u16::from_be_bytes([o[2], o[3]]));
            let six_to_four = Ipv6Addr::new(0x2002, u16::from_be_bytes([o[0], o[1]]), u16::from_be_bytes([o[2], o[3]]), 0, 0, 0, 0, 1);
            prop_assert_eq!(special_range(IpAddr::V6(mapped)), expected);
            prop_assert_eq!(special_range(IpAddr::V6(nat64)), expected);
            prop_assert_eq!(special_range(IpAddr::V6(six_to_four)), expected);
        }

        #[test]
        fn names_never_match_ip_entries_and_back(n in name(1, 3), a in any::<u32>()) {
            let ip = Ipv4Addr::from(a);
            let net = HostPattern::parse("0.0.0.0/0:*").unwrap();
            prop_assert!(!net.matches(&n, 443));
            let any = HostPattern::parse("*:*").unwrap();
            prop_assert!(!any.matches(&ip.to_string(), 443));
            prop_assert!(any.matches(&n, 443));
        }
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_host("API.GitHub.com.").unwrap(), "api.github.com");
        assert_eq!(
            canonical_host("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "a b",
            "a@b",
            "a\\b",
            "a%2eb",
            "a/b",
            "a\0b",
            "a\nb",
            "2130706433",
            "0x7f.1",
            "127.1",
        ] {
            assert!(canonical_host(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn special_ranges() {
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.0.1", Some("loopback")),
            ("10.2.3.4", Some("private (RFC 1918)")),
            ("172.31.0.1", Some("private (RFC 1918)")),
            ("192.168.1.1", Some("private (RFC 1918)")),
            ("100.64.0.1", Some("shared address space (CGNAT)")),
            ("169.254.169.254", Some("cloud metadata")),
            ("168.63.129.16", Some("cloud metadata")),
            ("100.100.100.200", Some("cloud metadata")),
            ("169.254.1.1", Some("link-local")),
            ("224.0.0.1", Some("multicast")),
            ("0.0.0.0", Some("unspecified (0.0.0.0/8)")),
            ("8.8.8.8", None),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fd00:ec2::254", Some("cloud metadata")),
            ("fd12::1", Some("unique local (ULA)")),
            ("fe80::1", Some("link-local")),
            ("ff02::1", Some("multicast")),
            ("::ffff:169.254.169.254", Some("cloud metadata")),
            ("64:ff9b::a9fe:a9fe", Some("cloud metadata")),
            ("2002:7f00:1::", Some("loopback")),
            ("2606:4700::1111", None),
        ];
        for (ip, want) in cases {
            assert_eq!(special_range(ip.parse().unwrap()), *want, "{ip}");
        }
    }

    #[test]
    fn pattern_forms() {
        for ok in [
            "api.anthropic.com",
            "*.githubusercontent.com",
            "**.cdn.example.net",
            "ssh.github.com:22",
            "git.internal:*",
            "203.0.113.0/24",
            "10.1.2.3:5432",
            "10.9.0.0/16:*",
            "[2001:db8::1]:8443",
            "[2001:db8::/32]:*",
            "2001:db8::/32",
            "*",
            "*:*",
        ] {
            assert!(HostPattern::parse(ok).is_ok(), "{ok}");
        }
        let mapped = HostPattern::parse("[::ffff:10.0.0.1]").unwrap();
        assert!(mapped.matches("10.0.0.1", 443));
    }
}

mod decide {
    use super::*;

    const SPEC: &str = r#"version = 1
name = "team-default"
mode = "enforce"

[network]
allow = [
  "api.anthropic.com",
  "*.githubusercontent.com",
  "**.cdn.example.net",
  "ssh.github.com:22",
  "git.internal:*",
  "203.0.113.0/24",
  "10.1.2.3:5432",
  "10.9.0.0/16:*",
  "[2001:db8::1]:8443",
  "uploads.github.com",
]
deny = ["uploads.github.com", "bad.cdn.example.net:*"]

[[network.http]]
host = "api.github.com"
methods = ["GET", "HEAD"]
paths = ["/repos/acme/**", "/users/*"]

[filesystem]
workspace = "rw"
deny = ["**/.env", "**/*.pem", "~/.ssh", "~/.aws"]
[[filesystem.mounts]]
host = "~/.gitconfig"
mode = "ro"
[[filesystem.mounts]]
host = "/opt/datasets"
path = "/data"
mode = "ro"
[[filesystem.mounts]]
host = "/srv/cache"
mode = "rw"

[limits]
memory = "4GiB"
pids = 512
cpus = 2.0

[[credentials]]
name = "anthropic"
source = "env:ANTHROPIC_API_KEY"
hosts = ["api.anthropic.com"]
env = "ANTHROPIC_API_KEY"

[[credentials]]
name = "github"
source = "env:GITHUB_TOKEN"
hosts = ["api.github.com", "*.githubusercontent.com"]
header = "authorization"
format = "Bearer {secret}"

[[mcp.servers]]
name = "github"
command = ["npx", "-y", "@modelcontextprotocol/server-github"]
credentials = ["github"]
tools.allow = ["get_*", "search_*"]
tools.deny = ["delete_*", "get_secret"]
network.allow = ["api.github.com"]

[[mcp.servers]]
name = "fs"
url = "https://mcp.example.com/mcp"
"#;

    pub(crate) fn spec_policy() -> Policy {
        Policy::parse(SPEC, "policy.toml", Path::new(".")).unwrap()
    }

    /// (request, allow, rule: a needle on the deciding line, or "" for default deny)
    type Case<'a> = (Request<'a>, bool, &'a str);

    pub(crate) fn cases<'a>(
        ws: &'a Path,
        home: &'a Path,
        paths: &'a [std::path::PathBuf],
        args: &'a serde_json::Value,
    ) -> Vec<Case<'a>> {
        let path = |i: usize, write: bool| Request::Path {
            path: &paths[i],
            write,
            workspace: ws,
            home,
        };
        vec![
            // network: every form of SPEC §4
            (
                Request::Connect {
                    host: "api.anthropic.com",
                    port: 443,
                },
                true,
                "\"api.anthropic.com\",",
            ),
            (
                Request::Connect {
                    host: "API.Anthropic.COM.",
                    port: 80,
                },
                true,
                "\"api.anthropic.com\",",
            ),
            (
                Request::Connect {
                    host: "api.anthropic.com",
                    port: 8443,
                },
                false,
                "",
            ),
            (
                Request::Connect {
                    host: "raw.githubusercontent.com",
                    port: 443,
                },
                true,
                "\"*.githubusercontent.com\",",
            ),
            (
                Request::Connect {
                    host: "a.b.githubusercontent.com",
                    port: 443,
                },
                false,
                "",
            ),
            (
                Request::Connect {
                    host: "githubusercontent.com",
                    port: 443,
                },
                false,
                "",
            ),
            (
                Request::Connect {
                    host: "x.y.cdn.example.net",
                    port: 443,
                },
                true,
                "**.cdn.example.net",
            ),
            (
                Request::Connect {
                    host: "cdn.example.net",
                    port: 443,
                },
                false,
                "",
            ),
            (
                Request::Connect {
                    host: "bad.cdn.example.net",
                    port: 443,
                },
                false,
                "bad.cdn.example.net",
            ),
            (
                Request::Connect {
                    host: "ssh.github.com",
                    port: 22,
                },
                true,
                "ssh.github.com:22",
            ),
            (
                Request::Connect {
                    host: "ssh.github.com",
                    port: 443,
                },
                false,
                "",
            ),
            (
                Request::Connect {
                    host: "git.internal",
                    port: 9418,
                },
                true,
                "git.internal:*",
            ),
            (
                Request::Connect {
                    host: "203.0.113.7",
                    port: 443,
                },
                true,
                "203.0.113.0/24",
            ),
            (
                Request::Connect {
                    host: "203.0.113.7",
                    port: 22,
                },
                false,
                "",
            ),
            (
                Request::Connect {
                    host: "::ffff:203.0.113.7",
                    port: 80,
                },
                true,
                "203.0.113.0/24",
            ),
            (
                Request::Connect {
                    host: "10.1.2.3",
                    port: 5432,
                },
                true,
                "10.1.2.3:5432",
            ),
            (
                Request::Connect {
                    host: "10.9.200.1",
                    port: 6379,
                },
                true,
                "10.9.0.0/16:*",
            ),
            (
                Request::Connect {
                    host: "[2001:db8::1]",
                    port: 8443,
                },
                true,
                "[2001:db8::1]:8443",
            ),
            (
                Request::Connect {
                    host: "2001:db8::1",
                    port: 8443,
                },
                true,
                "[2001:db8::1]:8443",
            ),
            (
                Request::Connect {
                    host: "2001:db8::2",
                    port: 8443,
                },
                false,
                "",
            ),
            (
                Request::Connect {
                    host: "uploads.github.com",
                    port: 443,
                },
                false,
                "deny = [\"uploads.github.com\"",
            ),
            (
                Request::Connect {
                    host: "uploads.github.com",
                    port: 22,
                },
                false,
                "deny = [\"uploads.github.com\"",
            ),
            (
                Request::Connect {
                    host: "api.github.com",
                    port: 443,
                },
                true,
                "host = \"api.github.com\"",
            ),
            (
                Request::Connect {
                    host: "evil.example",
                    port: 443,
                },
                false,
                "",
            ),
            (
                Request::Connect {
                    host: "a..b",
                    port: 443,
                },
                false,
                "",
            ),
            // http rules
            (
                Request::Http {
                    method: "GET",
                    url: "https://api.github.com/repos/acme/widgets/issues",
                },
                true,
                "host = \"api.github.com\"",
            ),
            (
                Request::Http {
                    method: "head",
                    url: "https://api.github.com/repos/acme",
                },
                true,
                "host = \"api.github.com\"",
            ),
            (
                Request::Http {
                    method: "GET",
                    url: "https://api.github.com/users/octocat",
                },
                true,
                "host = \"api.github.com\"",
            ),
            (
                Request::Http {
                    method: "GET",
                    url: "https://api.github.com/users/octocat/repos",
                },
                false,
                "host = \"api.github.com\"",
            ),
            (
                Request::Http {
                    method: "POST",
                    url: "https://api.github.com/repos/acme/widgets/issues",
                },
                false,
                "host = \"api.github.com\"",
            ),
            (
                Request::Http {
                    method: "GET",
                    url: "https://api.github.com/repos/other/x",
                },
                false,
                "host = \"api.github.com\"",
            ),
            (
                Request::Http {
                    method: "GET",
                    url: "https://api.github.com/repos/acme/../other/x",
                },
                false,
                "host = \"api.github.com\"",
            ),
            (
                Request::Http {
                    method: "GET",
                    url: "https://api.github.com/repos/acme/%2e%2e/other",
                },
                false,
                "host = \"api.github.com\"",
            ),
            (
                Request::Http {
                    method: "GET",
                    url: "https://api.github.com/repos/acme%2f..%2fother",
                },
                false,
                "host = \"api.github.com\"",
            ),
            (
                Request::Http {
                    method: "GET",
                    url: "https://api.github.com:8443/repos/acme/x",
                },
                false,
                "",
            ),
            (
                Request::Http {
                    method: "POST",
                    url: "https://api.anthropic.com/v1/messages",
                },
                true,
                "\"api.anthropic.com\",",
            ),
            (
                Request::Http {
                    method: "GET",
                    url: "http://uploads.github.com/x",
                },
                false,
                "deny = [\"uploads.github.com\"",
            ),
            (
                Request::Http {
                    method: "GET",
                    url: "https://evil.example/",
                },
                false,
                "",
            ),
            (
                Request::Http {
                    method: "GET",
                    url: "ftp://api.anthropic.com/",
                },
                false,
                "",
            ),
            // filesystem
            (path(0, true), true, "workspace = \"rw\""),
            (path(1, false), false, "\"**/.env\""),
            (path(2, false), false, "\"**/*.pem\""),
            (path(3, false), false, "\"~/.ssh\""),
            (path(4, false), true, "host = \"~/.gitconfig\""),
            (path(4, true), false, "host = \"~/.gitconfig\""),
            (path(5, false), true, "host = \"/opt/datasets\""),
            (path(6, false), false, ""),
            (path(7, false), false, ""),
            (path(8, true), true, "host = \"/srv/cache\""),
            (path(9, false), false, "\"~/.aws\""),
            // credentials
            (
                Request::Credential {
                    name: "anthropic",
                    host: "api.anthropic.com",
                },
                true,
                "hosts = [\"api.anthropic.com\"]",
            ),
            (
                Request::Credential {
                    name: "anthropic",
                    host: "evil.example",
                },
                false,
                "",
            ),
            (
                Request::Credential {
                    name: "github",
                    host: "objects.githubusercontent.com",
                },
                true,
                "hosts = [\"api.github.com\", \"*.githubusercontent.com\"]",
            ),
            (
                Request::Credential {
                    name: "nope",
                    host: "api.anthropic.com",
                },
                false,
                "",
            ),
            // tools
            (
                Request::Tool {
                    server: "github",
                    tool: "get_issue",
                    args,
                },
                true,
                "tools.allow",
            ),
            (
                Request::Tool {
                    server: "github",
                    tool: "search_code",
                    args,
                },
                true,
                "tools.allow",
            ),
            (
                Request::Tool {
                    server: "github",
                    tool: "get_secret",
                    args,
                },
                false,
                "tools.deny",
            ),
            (
                Request::Tool {
                    server: "github",
                    tool: "delete_repo",
                    args,
                },
                false,
                "tools.deny",
            ),
            (
                Request::Tool {
                    server: "github",
                    tool: "create_issue",
                    args,
                },
                false,
                "",
            ),
            (
                Request::Tool {
                    server: "fs",
                    tool: "anything",
                    args,
                },
                true,
                "name = \"fs\"",
            ),
            (
                Request::Tool {
                    server: "unknown",
                    tool: "get_x",
                    args,
                },
                false,
                "",
            ),
            // prompts and resources: every one of a configured server
            (
                Request::Prompt {
                    server: "fs",
                    prompt: "review",
                    args,
                },
                true,
                "name = \"fs\"",
            ),
            (
                Request::Resource {
                    server: "fs",
                    uri: "file:///a.md",
                },
                true,
                "name = \"fs\"",
            ),
            (
                Request::Prompt {
                    server: "unknown",
                    prompt: "review",
                    args,
                },
                false,
                "",
            ),
            (
                Request::Resource {
                    server: "unknown",
                    uri: "file:///a.md",
                },
                false,
                "",
            ),
        ]
    }

    pub(crate) fn fixture_paths(ws: &Path, home: &Path) -> Vec<std::path::PathBuf> {
        vec![
            ws.join("src/main.rs"),
            ws.join("app/.env"),
            ws.join("certs/server.pem"),
            home.join(".ssh/id_ed25519"),
            home.join(".gitconfig"),
            Path::new("/opt/datasets/a/b.csv").to_path_buf(),
            home.join("other/file"),
            Path::new("/etc/shadow").to_path_buf(),
            Path::new("/srv/cache/x/../y").to_path_buf(),
            home.join(".aws/credentials"),
        ]
    }

    #[test]
    fn table() {
        let p = spec_policy();
        let ws = Path::new("/home/alice/proj");
        let home = Path::new("/home/alice");
        let paths = fixture_paths(ws, home);
        let args = serde_json::json!({"owner": "acme", "n": 1.5, "x": null});
        for (req, allow, needle) in cases(ws, home, &paths, &args) {
            let d = p.decide(&principal(), &req);
            assert_eq!(d.allow, allow, "{req:?} -> {d:?}");
            let want = if needle.is_empty() {
                RuleRef::Default
            } else {
                RuleRef::Line {
                    file: "policy.toml".into(),
                    line: line_of(SPEC, needle),
                }
            };
            assert_eq!(d.rule, want, "{req:?} -> {d:?}");
            assert!(!d.reason.is_empty());
        }
    }

    #[test]
    fn rule_refs_render() {
        let p = spec_policy();
        let d = p.decide(
            &principal(),
            &Request::Connect {
                host: "evil.example",
                port: 443,
            },
        );
        assert_eq!(d.rule.to_string(), "default deny");
        let d = p.decide(
            &principal(),
            &Request::Connect {
                host: "uploads.github.com",
                port: 443,
            },
        );
        assert_eq!(
            d.rule.to_string(),
            format!("policy.toml:{}", line_of(SPEC, "deny = [\"uploads"))
        );
    }

    #[test]
    fn resolved_addresses() {
        let p = spec_policy();
        let ip = |s: &str| s.parse().unwrap();
        assert!(p.check_address(ip("140.82.112.3"), 443).is_none());
        for bad in [
            "127.0.0.1",
            "169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:a9fe:a9fe::1",
            "fd00:ec2::254",
            "192.168.1.1",
        ] {
            let d = p
                .check_address(ip(bad), 443)
                .unwrap_or_else(|| panic!("{bad} must be denied"));
            assert!(!d.allow);
        }
        // Explicitly allowed private addresses pass, on the allowed port only.
        assert!(p.check_address(ip("10.9.1.1"), 80).is_none());
        assert!(p.check_address(ip("10.1.2.3"), 5432).is_none());
        assert!(p.check_address(ip("10.1.2.3"), 22).is_some());
    }

    #[test]
    fn workspace_guard() {
        let p = spec_policy();
        let home = Path::new("/home/alice");
        assert!(
            p.check_workspace(Path::new("/home/alice/proj"), home)
                .is_ok()
        );
        assert!(p.check_workspace(Path::new("/"), home).is_err());
        assert!(p.check_workspace(Path::new("/home/alice"), home).is_err());
        assert!(
            p.check_workspace(Path::new("/home/alice/proj/.."), home)
                .is_err()
        );
        assert!(p.check_workspace(Path::new("/home"), home).is_err());
        // A workspace that is refused grants nothing.
        let d = p.decide(
            &principal(),
            &Request::Path {
                path: Path::new("/home/alice/notes.txt"),
                write: false,
                workspace: home,
                home,
            },
        );
        assert!(!d.allow);
        // ...unless the policy names it explicitly.
        let named = Policy::parse(
            "version = 1\n[[filesystem.mounts]]\nhost = \"~\"\nmode = \"ro\"\n",
            "p.toml",
            Path::new("."),
        )
        .unwrap();
        assert!(named.check_workspace(home, home).is_ok());
    }

    #[test]
    fn deny_matcher_for_the_sandbox() {
        let p = spec_policy();
        let m = p.deny_matcher(Path::new("/home/alice"));
        assert!(m.is_denied(Path::new("/home/alice/.ssh")));
        assert!(m.is_denied(Path::new("/home/alice/.ssh/id_rsa")));
        assert!(m.is_denied(Path::new("/w/x/.env")));
        assert!(m.is_denied(Path::new("/w/x/.env/inner")));
        assert!(m.is_denied(Path::new("/w/key.pem")));
        assert!(!m.is_denied(Path::new("/w/.envrc")));
        assert!(!m.is_denied(Path::new("/home/alice/proj/main.rs")));
        let open = Policy::preset(Preset::Open);
        let m = open.deny_matcher(Path::new("/home/alice"));
        assert!(m.is_denied(Path::new("/home/alice/proj")));
        assert!(!m.is_denied_below(
            Path::new("/home/alice/proj/x"),
            Path::new("/home/alice/proj")
        ));
    }

    #[test]
    fn cedar_rules_from_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rules")).unwrap();
        std::fs::write(
            dir.path().join("rules/a.cedar"),
            "// infra may reach the db\npermit (principal, action == Warden::Action::\"connect\", resource == Warden::Host::\"db.internal\")\nwhen { principal.labels.team == \"infra\" && context.port == 5432 };\n\nforbid (principal, action, resource == Warden::Host::\"api.anthropic.com\")\nwhen { principal.agent == \"evil\" };\n\nforbid (principal, action == Warden::Action::\"call_tool\", resource)\nwhen { context.args has owner && context.args.owner == \"secret-org\" };\n\nforbid (principal, action == Warden::Action::\"connect\", resource is Warden::Host)\nwhen { principal.user == \"mallory\" };\n\nforbid (principal, action == Warden::Action::\"read_resource\", resource)\nwhen { context.server == \"github\" && context.uri like \"file:///private/*\" };\n\nforbid (principal, action == Warden::Action::\"get_prompt\", resource == Warden::Prompt::\"github/leak\");\n",
        )
        .unwrap();
        let src = "version = 1\n[network]\nallow = [\"api.anthropic.com\"]\n[[mcp.servers]]\nname = \"github\"\nurl = \"https://x.example/mcp\"\n[cedar]\nfiles = [\"rules/*.cedar\"]\n";
        std::fs::write(dir.path().join("policy.toml"), src).unwrap();
        let p = Policy::load(&dir.path().join("policy.toml")).unwrap();
        let who = principal();
        let d = p.decide(
            &who,
            &Request::Connect {
                host: "db.internal",
                port: 5432,
            },
        );
        assert!(d.allow, "{d:?}");
        assert_eq!(d.rule.to_string(), "rules/a.cedar:2");
        let d = p.decide(
            &who,
            &Request::Connect {
                host: "db.internal",
                port: 22,
            },
        );
        assert!(!d.allow);
        let mut evil = principal();
        evil.agent = "evil".into();
        let d = p.decide(
            &evil,
            &Request::Connect {
                host: "api.anthropic.com",
                port: 443,
            },
        );
        assert!(!d.allow);
        assert_eq!(d.rule.to_string(), "rules/a.cedar:5");
        let d = p.decide(
            &who,
            &Request::Connect {
                host: "api.anthropic.com",
                port: 443,
            },
        );
        assert!(d.allow);
        let args = serde_json::json!({"owner": "secret-org", "f": 0.5});
        let d = p.decide(
            &who,
            &Request::Tool {
                server: "github",
                tool: "x",
                args: &args,
            },
        );
        assert!(!d.allow);
        assert_eq!(d.rule.to_string(), "rules/a.cedar:8");
        let args = serde_json::json!({"owner": "acme"});
        assert!(
            p.decide(
                &who,
                &Request::Tool {
                    server: "github",
                    tool: "x",
                    args: &args
                }
            )
            .allow
        );
        // Prompts and resources: allowed for the configured server, narrowed by forbids.
        let read = |uri| {
            p.decide(
                &who,
                &Request::Resource {
                    server: "github",
                    uri,
                },
            )
        };
        let d = read("file:///private/key");
        assert!(!d.allow);
        assert_eq!(d.rule.to_string(), "rules/a.cedar:14");
        assert!(read("file:///public/readme").allow);
        let prompt = |prompt| {
            p.decide(
                &who,
                &Request::Prompt {
                    server: "github",
                    prompt,
                    args: &args,
                },
            )
        };
        let d = prompt("leak");
        assert!(!d.allow);
        assert_eq!(d.rule.to_string(), "rules/a.cedar:17");
        assert!(prompt("review").allow);
        // Principal-only rules are cached per principal: alternate principals.
        let mut mallory = principal();
        mallory.user = "mallory".into();
        for _ in 0..3 {
            let d = p.decide(
                &mallory,
                &Request::Connect {
                    host: "api.anthropic.com",
                    port: 443,
                },
            );
            assert!(!d.allow);
            assert_eq!(d.rule.to_string(), "rules/a.cedar:11");
            assert!(
                p.decide(
                    &who,
                    &Request::Connect {
                        host: "api.anthropic.com",
                        port: 443
                    }
                )
                .allow
            );
        }
        // The id covers the cedar files.
        let before = p.id().to_owned();
        std::fs::write(
            dir.path().join("rules/a.cedar"),
            "forbid (principal, action, resource);\n",
        )
        .unwrap();
        let p2 = Policy::load(&dir.path().join("policy.toml")).unwrap();
        assert_ne!(before, p2.id());
        assert!(p2.id().starts_with("policy@"));
        assert_eq!(p2.id().len(), "policy@".len() + 12);
    }

    #[test]
    fn an_mcp_server_gets_its_own_sandbox_policy() {
        let p = spec_policy();
        assert!(p.for_mcp_server("nope").is_none());
        let gh = p.for_mcp_server("github").unwrap();
        assert_eq!(gh.id(), format!("{}#mcp:github", p.id()));
        let pr = principal();
        let net =
            |pol: &Policy, host: &str| pol.decide(&pr, &Request::Connect { host, port: 443 }).allow;
        // Its own network: api.github.com only; the session's hosts are not its.
        assert!(net(&gh, "api.github.com"));
        assert!(!net(&gh, "api.anthropic.com"));
        assert!(net(&p, "api.anthropic.com"));
        // Only its own credentials, no servers of its own, no workspace by default,
        // and the session's secrets directories hidden from it too.
        let d = gh.doc();
        assert_eq!(
            d.credentials
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["github"]
        );
        assert!(d.mcp.servers.is_empty());
        assert_eq!(d.filesystem.workspace, WorkspaceMode::None);
        for pat in &p.doc().filesystem.deny {
            assert!(d.filesystem.deny.contains(pat), "{pat}");
        }
        assert_eq!(d.limits, Limits::default());
    }

    #[test]
    fn doc_tables() {
        let p = spec_policy();
        let d = p.doc();
        assert_eq!(p.name(), "team-default");
        assert_eq!(p.mode(), Mode::Enforce);
        assert_eq!(d.limits.memory, Some(4 << 30));
        assert_eq!(d.limits.pids, Some(512));
        assert_eq!(d.limits.cpus, Some(2.0));
        assert_eq!(d.filesystem.mounts[0].host, Path::new("~/.gitconfig"));
        assert_eq!(
            d.filesystem.mounts[1].path.as_deref(),
            Some(Path::new("/data"))
        );
        assert_eq!(
            d.credentials[0].source,
            CredentialSource::Env("ANTHROPIC_API_KEY".into())
        );
        assert_eq!(d.credentials[1].format.as_deref(), Some("Bearer {secret}"));
        let gh = &d.mcp.servers[0];
        assert_eq!(
            gh.tools_allow.as_deref(),
            Some(&["get_*".to_owned(), "search_*".to_owned()][..])
        );
        assert_eq!(gh.network.allow[0].written, "api.github.com");
        assert_eq!(gh.filesystem.workspace, WorkspaceMode::None);
        assert_eq!(
            d.mcp.servers[1].transport,
            Transport::Url("https://mcp.example.com/mcp".into())
        );
        assert_eq!(
            expand_home(Path::new("~/.gitconfig"), Path::new("/h")),
            Path::new("/h/.gitconfig")
        );
        assert_eq!(
            expand_home(Path::new("~"), Path::new("/h")),
            Path::new("/h")
        );
        assert_eq!(
            expand_home(Path::new("/x"), Path::new("/h")),
            Path::new("/x")
        );
    }

    #[test]
    fn inject_body_is_opt_in() {
        let p = Policy::parse(
            "version = 1\n\
             [[credentials]]\nname = \"a\"\nsource = \"env:A\"\nhosts = [\"a.example\"]\n\
             inject_body = true\n\
             [[credentials]]\nname = \"b\"\nsource = \"env:B\"\nhosts = [\"b.example\"]\n",
            "policy.toml",
            Path::new("."),
        )
        .unwrap();
        let c = &p.doc().credentials;
        assert!(c[0].inject_body, "written `true` is on");
        assert!(!c[1].inject_body, "not written is off");
        assert!(!spec_policy().doc().credentials[1].inject_body);
    }

    #[test]
    fn optional_is_opt_in() {
        let p = Policy::parse(
            "version = 1\n\
             [[credentials]]\nname = \"a\"\nsource = \"env:A\"\nhosts = [\"a.example\"]\n\
             optional = true\n\
             [[credentials]]\nname = \"b\"\nsource = \"env:B\"\nhosts = [\"b.example\"]\n",
            "policy.toml",
            Path::new("."),
        )
        .unwrap();
        let c = &p.doc().credentials;
        assert!(c[0].optional, "written `true` is on");
        assert!(!c[1].optional, "not written is off");
    }
}

mod equivalence {
    //! The native decisions must equal what the Cedar authorizer decides on `to_cedar()`.
    use super::*;
    use cedar_policy::{Authorizer, Decision as CD, PolicySet};
    use std::str::FromStr;

    fn check(p: &Policy, req: &Request<'_>) {
        let who = principal();
        let native = p.decide(&who, req);
        let text = p.to_cedar();
        let set = PolicySet::from_str(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        let Ok((creq, ents)) = p.cedar_request(&who, req) else {
            // Malformed requests never reach Cedar: they are denied natively.
            assert!(!native.allow, "{req:?}");
            return;
        };
        let resp = Authorizer::new().is_authorized(&creq, &set, &ents);
        let errors: Vec<String> = resp.diagnostics().errors().map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{req:?}: cedar errors {errors:?}");
        assert_eq!(
            resp.decision() == CD::Allow,
            native.allow,
            "{req:?}: native {native:?}"
        );
        let rules: Vec<String> = resp
            .diagnostics()
            .reason()
            .filter_map(|id| {
                set.policy(id)
                    .and_then(|pol| pol.annotation("rule"))
                    .map(str::to_owned)
            })
            .collect();
        if !rules.is_empty()
            && let RuleRef::Line { .. } = native.rule
        {
            assert!(
                rules.contains(&native.rule.to_string()),
                "{req:?}: native {native:?}, cedar {rules:?}"
            );
        }
    }

    #[test]
    fn spec_policy_table() {
        let p = super::decide::spec_policy();
        let ws = Path::new("/home/alice/proj");
        let home = Path::new("/home/alice");
        let paths = super::decide::fixture_paths(ws, home);
        let args = serde_json::json!({"owner": "acme"});
        for (req, _, _) in super::decide::cases(ws, home, &paths, &args) {
            check(&p, &req);
        }
    }

    #[test]
    fn presets_table() {
        let ws = Path::new("/home/alice/proj");
        let home = Path::new("/home/alice");
        let paths = super::decide::fixture_paths(ws, home);
        let args = serde_json::json!({});
        for preset in Preset::ALL {
            let p = Policy::preset(preset);
            for (req, _, _) in super::decide::cases(ws, home, &paths, &args) {
                check(&p, &req);
            }
        }
    }

    #[test]
    fn wildcard_and_ip_policy() {
        let p = Policy::parse(
            "version = 1\n[network]\nallow = [\"*\", \"10.0.0.0/8:*\", \"[fd00::/8]:443\"]\ndeny = [\"**.evil.example\", \"10.6.6.6\"]\n[[network.http]]\nhost = \"*.api.example\"\npaths = [\"/v1/*/items\", \"/v2/**\"]\n",
            "w.toml",
            Path::new("."),
        )
        .unwrap();
        let reqs = [
            Request::Connect {
                host: "anything.example",
                port: 443,
            },
            Request::Connect {
                host: "anything.example",
                port: 22,
            },
            Request::Connect {
                host: "x.evil.example",
                port: 443,
            },
            Request::Connect {
                host: "evil.example",
                port: 443,
            },
            Request::Connect {
                host: "10.1.1.1",
                port: 22,
            },
            Request::Connect {
                host: "10.6.6.6",
                port: 22,
            },
            Request::Connect {
                host: "[fd00::5]",
                port: 443,
            },
            Request::Connect {
                host: "8.8.8.8",
                port: 443,
            },
            Request::Http {
                method: "GET",
                url: "https://a.api.example/v1/x/items",
            },
            Request::Http {
                method: "GET",
                url: "https://a.api.example/v1/x/y/items",
            },
            Request::Http {
                method: "PUT",
                url: "https://a.api.example/v2/q/r",
            },
            Request::Http {
                method: "GET",
                url: "https://a.api.example/v3",
            },
            Request::Http {
                method: "GET",
                url: "https://a.api.example/v2%2f..%2fv3",
            },
            Request::Http {
                method: "GET",
                url: "https://b.a.api.example/anything",
            },
            Request::Credential {
                name: "x",
                host: "a.example",
            },
        ];
        for r in &reqs {
            check(&p, r);
        }
    }
}

mod presets {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Preset::ALL {
            assert_eq!(p.to_string().parse::<Preset>().unwrap(), p);
        }
        assert!("permissive".parse::<Preset>().is_err());
    }

    #[test]
    fn preset_texts_compile() {
        for p in Preset::ALL {
            let src = preset_source(p);
            let parsed = Policy::parse(src, "policy.toml", Path::new(".")).unwrap();
            assert_eq!(parsed.name(), p.to_string());
            assert!(
                src.lines().filter(|l| l.starts_with('#')).count() >= 2,
                "{p} is commented"
            );
            assert_ne!(Policy::preset(p).id(), format!("{p}@000000000000"));
        }
    }

    fn allows(p: &Policy, host: &str, port: u16) -> bool {
        p.decide(&principal(), &Request::Connect { host, port })
            .allow
    }

    fn sees(p: &Policy, path: &str, write: bool) -> bool {
        p.decide(
            &principal(),
            &Request::Path {
                path: Path::new(path),
                write,
                workspace: Path::new("/home/alice/proj"),
                home: Path::new("/home/alice"),
            },
        )
        .allow
    }

    #[test]
    fn open() {
        let p = Policy::preset(Preset::Open);
        assert!(allows(&p, "example.com", 443));
        assert!(allows(&p, "example.com", 5432));
        assert!(!allows(&p, "127.0.0.1", 80), "IP literals need IP entries");
        assert!(p.check_address("127.0.0.1".parse().unwrap(), 80).is_some());
        assert!(sees(&p, "/home/alice/proj/src/lib.rs", true));
        assert!(!sees(&p, "/home/alice/.bashrc", false));
        assert!(!sees(&p, "/home/alice", false));
    }

    #[test]
    fn balanced() {
        let p = Policy::preset(Preset::Balanced);
        for h in [
            "api.anthropic.com",
            "registry.npmjs.org",
            "crates.io",
            "github.com",
            "raw.githubusercontent.com",
            "pypi.org",
        ] {
            assert!(allows(&p, h, 443), "{h}");
        }
        assert!(allows(&p, "github.com", 22));
        assert!(allows(&p, "ssh.github.com", 22));
        assert!(!allows(&p, "gitlab.com", 22));
        assert!(!allows(&p, "example.com", 443));
        assert!(!allows(&p, "a.b.githubusercontent.com", 443));
        assert!(sees(&p, "/home/alice/proj/src/lib.rs", true));
        assert!(!sees(&p, "/home/alice/proj/.env", false));
        assert!(!sees(&p, "/home/alice/proj/.env.local", false));
        assert!(!sees(&p, "/home/alice/proj/tls/server.key", false));
        assert!(!sees(&p, "/home/alice/.ssh/id_rsa", false));
        // Agents' and tools' sign-in tokens stay hidden inside a mounted configuration.
        assert!(!sees(&p, "/home/alice/.claude/.credentials.json", false));
        assert!(!sees(
            &p,
            "/home/alice/proj/.agents/claude/.credentials.json",
            false
        ));
        assert!(!sees(&p, "/home/alice/.codex/auth.json", false));
        assert!(!sees(&p, "/home/alice/.config/gh/hosts.yml", false));
        // No limits by default: they need cgroups, which unprivileged users may lack.
        assert_eq!(p.doc().limits.pids, None);
        // The provider keys, each optional, bound to its provider's API hosts only.
        let creds: Vec<(&str, bool)> = p
            .doc()
            .credentials
            .iter()
            .map(|c| (c.env.as_deref().unwrap(), c.optional))
            .collect();
        assert_eq!(
            creds,
            [
                ("ANTHROPIC_API_KEY", true),
                ("CLAUDE_CODE_OAUTH_TOKEN", true),
                ("OPENAI_API_KEY", true),
                ("GEMINI_API_KEY", true),
                ("GOOGLE_API_KEY", true),
                ("GH_TOKEN", true),
                ("GITHUB_TOKEN", true),
            ]
        );
        let uses = |name: &str, host: &str| {
            p.decide(&principal(), &Request::Credential { name, host })
                .allow
        };
        assert!(uses("anthropic", "api.anthropic.com"));
        assert!(uses("claude-oauth", "api.anthropic.com"));
        assert!(!uses("claude-oauth", "api.github.com"));
        assert!(!uses("anthropic", "api.openai.com"));
        assert!(uses("gh", "github.com"));
        assert!(!uses("gh", "gist.github.com"));
    }

    #[test]
    fn locked() {
        let p = Policy::preset(Preset::Locked);
        assert!(!allows(&p, "api.anthropic.com", 443));
        assert!(!allows(&p, "10.0.0.1", 443));
        assert!(sees(&p, "/home/alice/proj/src/lib.rs", false));
        assert!(!sees(&p, "/home/alice/proj/src/lib.rs", true));
    }
}

/// `Policy::narrowed_by`: a central policy narrowed by a local file allows only what
/// both allow, on every surface; a local file asking for more than the central one
/// grants is an error naming the entry.
mod narrow {
    use super::*;

    const CENTRAL: &str = r#"version = 1
name = "central"
[network]
allow = ["both.test", "central-only.test", "denied-locally.test", "api.test", "10.9.0.0/16:*"]
deny = ["central-deny.test"]
[[network.http]]
host = "api.test"
methods = ["GET", "DELETE"]
[filesystem]
workspace = "rw"
deny = ["**/.env"]
[[filesystem.mounts]]
host = "/opt/data"
mode = "ro"
[[filesystem.mounts]]
host = "/srv/shared"
mode = "rw"
[limits]
memory = "4GiB"
pids = 100
[[credentials]]
name = "tok"
source = "env:CENTRAL_TOK"
hosts = ["both.test", "central-only.test"]
[[mcp.servers]]
name = "gh"
command = ["gh-mcp"]
credentials = ["tok"]
tools.allow = ["get_*", "list_*"]
tools.deny = ["get_secret"]
network.allow = ["both.test", "central-only.test"]
[cedar]
files = ["central.cedar"]
"#;

    const LOCAL: &str = r#"version = 1
name = "local"
[network]
allow = ["both.test", "local-only.test", "central-deny.test", "denied-locally.test", "api.test", "10.0.0.0/8:*"]
deny = ["denied-locally.test"]
[[network.http]]
host = "api.test"
methods = ["GET", "POST"]
[filesystem]
workspace = "ro"
deny = ["**/*.pem"]
[[filesystem.mounts]]
host = "/opt/data/sub"
mode = "rw"
[[filesystem.mounts]]
host = "/srv/shared"
mode = "rw"
[limits]
memory = "1GiB"
cpus = 1.0
[[credentials]]
name = "tok"
source = "env:LOCAL_TOK"
hosts = ["both.test", "local-only.test"]
[[mcp.servers]]
name = "gh"
command = ["gh-mcp"]
credentials = ["tok"]
tools.allow = ["get_*", "search_*"]
network.allow = ["both.test", "local-only.test"]
[cedar]
files = ["local.cedar"]
"#;

    const CENTRAL_CEDAR: &str = "forbid (principal, action == Warden::Action::\"call_tool\", resource)\nwhen { context.args has repo && context.args.repo == \"central-secret\" };\n";
    const LOCAL_CEDAR: &str = "forbid (principal, action == Warden::Action::\"call_tool\", resource)\nwhen { context.args has repo && context.args.repo == \"local-secret\" };\n";

    /// Both files (and their Cedar files) in a fresh directory, loaded.
    fn load(central: &str, local: &str) -> (tempfile::TempDir, Policy, Policy) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("central.cedar"), CENTRAL_CEDAR).unwrap();
        std::fs::write(dir.path().join("local.cedar"), LOCAL_CEDAR).unwrap();
        std::fs::write(dir.path().join("central.toml"), central).unwrap();
        std::fs::write(dir.path().join("local.toml"), local).unwrap();
        let c = Policy::load(&dir.path().join("central.toml")).unwrap();
        let l = Policy::load(&dir.path().join("local.toml")).unwrap();
        (dir, c, l)
    }

    fn combined() -> (tempfile::TempDir, Policy, Policy, Policy) {
        let (dir, c, l) = load(CENTRAL, LOCAL);
        let n = c.narrowed_by(&l).unwrap();
        (dir, c, l, n)
    }

    fn at(file: &str, line: u32) -> RuleRef {
        RuleRef::Line {
            file: file.into(),
            line,
        }
    }

    fn connect(p: &Policy, host: &str) -> Decision {
        p.decide(&principal(), &Request::Connect { host, port: 443 })
    }

    #[test]
    fn id_origin_and_parts() {
        let (_d, c, l, n) = combined();
        assert_eq!(n.id(), format!("{}+{}", c.id(), l.id()));
        assert_eq!(n.origin(), "central.toml narrowed by local.toml");
        let (pc, pl) = n.narrowing().unwrap();
        assert_eq!((pc.id(), pl.id()), (c.id(), l.id()));
        assert!(c.narrowing().is_none());
        // Stable: the same two files give the same id.
        assert_eq!(c.narrowed_by(&l).unwrap().id(), n.id());
    }

    #[test]
    fn network_allowed_only_when_both_allow_and_the_denying_rule_is_reported() {
        let (_d, _c, _l, n) = combined();
        let both = connect(&n, "both.test");
        assert!(both.allow, "{both:?}");
        assert_eq!(
            both.rule,
            at("central.toml", line_of(CENTRAL, "10.9.0.0/16:*"))
        );
        assert!(both.reason.contains("local.toml"), "{}", both.reason);
        // Central only: the local file does not allow it.
        let d = connect(&n, "central-only.test");
        assert!(!d.allow);
        assert_eq!(d.rule, RuleRef::Default);
        assert_eq!(
            d.reason,
            "central-only.test:443 matches no network.allow entry"
        );
        // Local only: the central policy does not allow it.
        let d = connect(&n, "local-only.test");
        assert!(!d.allow);
        assert_eq!(d.rule, RuleRef::Default);
        // The local file allows a host the central policy denies: still denied, by central.
        let d = connect(&n, "central-deny.test");
        assert!(!d.allow);
        assert_eq!(
            d.rule,
            at("central.toml", line_of(CENTRAL, "deny = [\"central-deny"))
        );
        // The central policy allows a host the local file denies: denied, by local.
        let d = connect(&n, "denied-locally.test");
        assert!(!d.allow);
        assert_eq!(
            d.rule,
            at("local.toml", line_of(LOCAL, "deny = [\"denied-locally"))
        );
    }

    #[test]
    fn http_rules_of_both_apply() {
        let (_d, _c, _l, n) = combined();
        let http = |m: &str| {
            n.decide(
                &principal(),
                &Request::Http {
                    method: m,
                    url: "https://api.test/x",
                },
            )
        };
        assert!(http("GET").allow);
        let post = http("POST");
        assert!(!post.allow);
        assert_eq!(
            post.rule,
            at("central.toml", line_of(CENTRAL, "host = \"api.test\""))
        );
        let delete = http("DELETE");
        assert!(!delete.allow);
        assert_eq!(
            delete.rule,
            at("local.toml", line_of(LOCAL, "host = \"api.test\""))
        );
    }

    #[test]
    fn a_resolved_special_address_needs_both_to_allow_it() {
        let (_d, _c, _l, n) = combined();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(n.check_address(ip("10.9.1.1"), 443).is_none());
        // Only the local file allows 10.1.0.0/16: refused.
        assert!(n.check_address(ip("10.1.1.1"), 443).is_some());
        assert!(n.check_address(ip("127.0.0.1"), 443).is_some());
    }

    #[test]
    fn mcp_tools_and_cedar_rules_of_both_decide() {
        let (_d, _c, _l, n) = combined();
        let tool = |t: &str, args: serde_json::Value| {
            n.decide(
                &principal(),
                &Request::Tool {
                    server: "gh",
                    tool: t,
                    args: &args,
                },
            )
        };
        let none = serde_json::json!({});
        assert!(tool("get_issue", none.clone()).allow);
        let d = tool("list_repos", none.clone());
        assert!(!d.allow);
        assert!(d.reason.contains("no tools.allow entry"), "{}", d.reason);
        let d = tool("search_code", none.clone());
        assert!(!d.allow);
        assert_eq!(d.rule, RuleRef::Default);
        assert!(
            d.reason.contains("of server `gh`"),
            "central lacks search_*: {}",
            d.reason
        );
        let d = tool("get_secret", none);
        assert!(!d.allow);
        assert!(d.reason.contains("tools.deny"), "{}", d.reason);
        // A Cedar forbid of either file denies.
        let d = tool("get_issue", serde_json::json!({"repo": "central-secret"}));
        assert!(!d.allow);
        assert!(d.rule.to_string().contains("central.cedar"), "{:?}", d.rule);
        let d = tool("get_issue", serde_json::json!({"repo": "local-secret"}));
        assert!(!d.allow);
        assert!(d.rule.to_string().contains("local.cedar"), "{:?}", d.rule);
        assert!(tool("get_issue", serde_json::json!({"repo": "open"})).allow);
        // A server the local file does not name is not allowed.
        let d = n.decide(
            &principal(),
            &Request::Tool {
                server: "other",
                tool: "get_x",
                args: &serde_json::json!({}),
            },
        );
        assert!(!d.allow);
    }

    #[test]
    fn credentials_go_only_where_both_send_them() {
        let (_d, _c, _l, n) = combined();
        let cred = |h: &str| {
            n.decide(
                &principal(),
                &Request::Credential {
                    name: "tok",
                    host: h,
                },
            )
            .allow
        };
        assert!(cred("both.test"));
        assert!(!cred("central-only.test"));
        assert!(!cred("local-only.test"));
        // The secret comes from where the central policy says.
        let c = &n.doc().credentials;
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].source, CredentialSource::Env("CENTRAL_TOK".into()));
    }

    #[test]
    fn paths_mounts_workspace_and_deny_patterns() {
        let (_d, _c, _l, n) = combined();
        let ws = Path::new("/work/ws");
        let home = Path::new("/home/u");
        let path = |p: &str, write: bool| {
            n.decide(
                &principal(),
                &Request::Path {
                    path: Path::new(p),
                    write,
                    workspace: ws,
                    home,
                },
            )
        };
        assert!(path("/opt/data/sub/f", false).allow);
        // Local rw inside a central ro mount: read-only.
        assert!(!path("/opt/data/sub/f", true).allow);
        // Central mounts the parent; the local file only the subdirectory.
        assert!(!path("/opt/data/other", false).allow);
        assert!(path("/srv/shared/f", true).allow);
        // The workspace: the stricter mode (local ro).
        assert!(path("/work/ws/f", false).allow);
        let d = path("/work/ws/f", true);
        assert!(!d.allow);
        assert_eq!(
            d.rule,
            at("local.toml", line_of(LOCAL, "workspace = \"ro\""))
        );
        // Deny patterns of both files hide.
        assert!(!path("/srv/shared/.env", false).allow);
        assert!(!path("/srv/shared/key.pem", false).allow);
        let fs = &n.doc().filesystem;
        assert_eq!(fs.workspace, WorkspaceMode::Ro);
        assert_eq!(fs.deny, ["**/.env", "**/*.pem"]);
        let mounts: Vec<_> = fs
            .mounts
            .iter()
            .map(|m| (m.host.to_str().unwrap(), m.mode))
            .collect();
        assert_eq!(
            mounts,
            [
                ("/opt/data/sub", MountMode::Ro),
                ("/srv/shared", MountMode::Rw)
            ]
        );
        let m = n.deny_matcher(home);
        assert!(m.is_denied(Path::new("/srv/shared/.env")));
        assert!(m.is_denied(Path::new("/srv/shared/a.pem")));
    }

    #[test]
    fn limits_mode_backend_and_intercept_take_the_stricter() {
        let (_d, _c, _l, n) = combined();
        let lim = n.doc().limits;
        assert_eq!(lim.memory, Some(1 << 30));
        assert_eq!(lim.pids, Some(100));
        assert_eq!(lim.cpus, Some(1.0));
        assert_eq!(n.mode(), Mode::Enforce);
        assert_eq!(n.doc().sandbox.backend, SandboxBackend::Namespaces);

        let audit = CENTRAL.replace("name = \"central\"", "name = \"central\"\nmode = \"audit\"");
        let gvisor =
            format!("{LOCAL}[sandbox]\nbackend = \"gvisor\"\n[tls]\nintercept = \"all\"\n");
        let (_d, c, l) = load(&audit, &gvisor);
        let n = c.narrowed_by(&l).unwrap();
        assert_eq!(n.mode(), Mode::Enforce, "audit central, enforcing local");
        assert_eq!(n.doc().sandbox.backend, SandboxBackend::Gvisor);
        assert_eq!(n.doc().tls.intercept, Intercept::All);
        // The other way round: the central requirement stays.
        let (_d, c, l) = load(
            &format!("{CENTRAL}[sandbox]\nbackend = \"gvisor\"\n"),
            LOCAL,
        );
        let n = c.narrowed_by(&l).unwrap();
        assert_eq!(n.doc().sandbox.backend, SandboxBackend::Gvisor);
        let both_audit = LOCAL.replace("name = \"local\"", "name = \"local\"\nmode = \"audit\"");
        let (_d, c, l) = load(&audit, &both_audit);
        assert_eq!(c.narrowed_by(&l).unwrap().mode(), Mode::Audit);
    }

    #[test]
    fn a_mcp_servers_own_part_is_narrowed_too() {
        let (_d, _c, _l, n) = combined();
        let s = n.for_mcp_server("gh").unwrap();
        assert!(s.narrowing().is_some());
        assert!(connect(&s, "both.test").allow);
        assert!(!connect(&s, "central-only.test").allow);
        assert!(!connect(&s, "local-only.test").allow);
        assert!(n.for_mcp_server("other").is_none());
    }

    #[test]
    fn asking_for_more_than_the_central_policy_grants_is_an_error_naming_it() {
        let extra_mount =
            format!("{LOCAL}[[filesystem.mounts]]\nhost = \"/etc/secrets\"\nmode = \"ro\"\n");
        let (_d, c, l) = load(CENTRAL, &extra_mount);
        let e = c.narrowed_by(&l).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.diagnostics().len(), 1, "{msg}");
        assert_eq!(
            e.diagnostics()[0].line,
            line_of(&extra_mount, "/etc/secrets")
        );
        assert!(msg.starts_with("local.toml:"), "{msg}");
        assert!(msg.contains("`/etc/secrets`"), "{msg}");
        assert!(
            msg.contains("the central policy central.toml does not allow it"),
            "{msg}"
        );
        assert!(msg.contains("hint:"), "{msg}");

        // A parent of a central mount is not inside it.
        let parent = LOCAL.replace("/opt/data/sub", "/opt");
        let (_d, c, l) = load(CENTRAL, &parent);
        assert!(
            c.narrowed_by(&l)
                .unwrap_err()
                .to_string()
                .contains("`/opt`")
        );

        let cred = format!(
            "{LOCAL}[[credentials]]\nname = \"mine\"\nsource = \"env:MINE\"\nhosts = [\"both.test\"]\n"
        );
        let (_d, c, l) = load(CENTRAL, &cred);
        assert!(
            c.narrowed_by(&l)
                .unwrap_err()
                .to_string()
                .contains("credential `mine`")
        );

        let server = format!("{LOCAL}[[mcp.servers]]\nname = \"extra\"\ncommand = [\"x\"]\n");
        let (_d, c, l) = load(CENTRAL, &server);
        assert!(
            c.narrowed_by(&l)
                .unwrap_err()
                .to_string()
                .contains("MCP server `extra`")
        );

        let command = LOCAL.replace(
            "command = [\"gh-mcp\"]",
            "command = [\"sh\", \"-c\", \"evil\"]",
        );
        let (_d, c, l) = load(CENTRAL, &command);
        let msg = c.narrowed_by(&l).unwrap_err().to_string();
        assert!(msg.contains("another command or URL"), "{msg}");

        let server_mount = LOCAL.replace(
            "network.allow = [\"both.test\", \"local-only.test\"]",
            "network.allow = [\"both.test\"]\nfilesystem.mounts = [{ host = \"/opt/data\", mode = \"ro\" }]",
        );
        let (_d, c, l) = load(CENTRAL, &server_mount);
        let msg = c.narrowed_by(&l).unwrap_err().to_string();
        assert!(
            msg.contains("MCP server `gh`: the mount of `/opt/data`"),
            "{msg}"
        );
    }

    #[test]
    fn a_refused_policy_denies_everything_with_its_reason() {
        let r = Policy::refused(
            "central@0123456789ab+local@0123456789ab#refused".into(),
            "central:central@v2 narrowed by local.toml".into(),
            "the local file no longer narrows the central policy".into(),
        );
        assert_eq!(
            r.refusal(),
            Some("the local file no longer narrows the central policy")
        );
        let d = connect(&r, "both.test");
        assert!(!d.allow);
        assert_eq!(
            d.reason,
            "the local file no longer narrows the central policy"
        );
        assert!(
            r.check_address("203.0.113.1".parse().unwrap(), 443)
                .is_some()
        );
        assert!(
            r.check_workspace(Path::new("/work"), Path::new("/home/u"))
                .is_err()
        );
        assert_eq!(r.doc().filesystem.workspace, WorkspaceMode::None);
        let s = r.for_mcp_server("gh").unwrap();
        assert!(s.refusal().is_some());
        assert!(!connect(&s, "both.test").allow);
    }
}
