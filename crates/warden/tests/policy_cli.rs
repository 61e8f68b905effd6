//! `warden policy init|check|explain` end to end: the real binary, real files, and
//! the exit codes of SPEC §3 (0 allow/ok, 1 deny/invalid, 2 usage, 125 bad policy).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

fn warden(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .current_dir(dir)
        .env("HOME", "/home/alice")
        .env("WARDEN_HOME", dir.join("state"))
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const POLICY: &str = r#"version = 1
name = "cli-test"

[network]
allow = [
  "api.github.com",
  "*.githubusercontent.com",
  "**.cdn.example.net",
  "ssh.github.com:22",
  "git.internal:*",
  "203.0.113.0/24",
  "[2001:db8::1]:8443",
]
deny = ["uploads.github.com", "evil.cdn.example.net"]

[[network.http]]
host = "api.github.com"
methods = ["GET", "HEAD"]
paths = ["/repos/acme/**"]

[filesystem]
workspace = "rw"
deny = ["**/.env", "~/.ssh"]
[[filesystem.mounts]]
host = "/opt/datasets"
path = "/data"
mode = "ro"

[[credentials]]
name = "github"
source = "env:GITHUB_TOKEN"
hosts = ["api.github.com"]
env = "GITHUB_TOKEN"

[[mcp.servers]]
name = "github"
command = ["npx", "-y", "@modelcontextprotocol/server-github"]
credentials = ["github"]
tools.allow = ["get_*", "search_*"]
tools.deny = ["get_secret*"]
"#;

/// Every request form of `explain`, with the expected decision and the rule it names.
#[test]
fn explain_table() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    let ws = "/home/alice/proj";
    let cases: &[(&[&str], bool, &str)] = &[
        (&["--net", "api.github.com"], true, "policy.toml:6"),
        (&["--net", "API.GitHub.com."], true, "policy.toml:6"),
        (&["--net", "api.github.com:22"], false, "default deny"),
        (
            &["--net", "raw.githubusercontent.com"],
            true,
            "policy.toml:7",
        ),
        (
            &["--net", "a.b.githubusercontent.com"],
            false,
            "default deny",
        ),
        (&["--net", "x.y.cdn.example.net"], true, "policy.toml:8"),
        (&["--net", "cdn.example.net"], false, "default deny"),
        (&["--net", "evil.cdn.example.net"], false, "policy.toml:14"),
        (&["--net", "ssh.github.com:22"], true, "policy.toml:9"),
        (&["--net", "git.internal:5432"], true, "policy.toml:10"),
        (&["--net", "203.0.113.9"], true, "policy.toml:11"),
        (&["--net", "203.0.113.9:22"], false, "default deny"),
        (&["--net", "[2001:db8::1]:8443"], true, "policy.toml:12"),
        (&["--net", "uploads.github.com"], false, "policy.toml:14"),
        (
            &[
                "--http",
                "GET",
                "https://api.github.com/repos/acme/x/issues",
            ],
            true,
            "policy.toml:17",
        ),
        (
            &[
                "--http",
                "POST",
                "https://api.github.com/repos/acme/x/issues",
            ],
            false,
            "policy.toml:17",
        ),
        (
            &["--http", "GET", "https://api.github.com/repos/other/x"],
            false,
            "policy.toml:17",
        ),
        (
            &["--path", "/home/alice/proj/src/main.rs", "--workspace", ws],
            true,
            "",
        ),
        (
            &[
                "--path",
                "/home/alice/proj/src/main.rs",
                "--write",
                "--workspace",
                ws,
            ],
            true,
            "",
        ),
        (
            &["--path", "/home/alice/proj/.env", "--workspace", ws],
            false,
            "policy.toml:23",
        ),
        (
            &["--path", "/home/alice/.ssh/id_rsa", "--workspace", ws],
            false,
            "policy.toml:23",
        ),
        (
            &["--path", "/opt/datasets/a.csv", "--workspace", ws],
            true,
            "policy.toml:25",
        ),
        (
            &[
                "--path",
                "/opt/datasets/a.csv",
                "--write",
                "--workspace",
                ws,
            ],
            false,
            "",
        ),
        (
            &["--path", "/etc/passwd", "--workspace", ws],
            false,
            "default deny",
        ),
        (&["--tool", "github/get_issue"], true, ""),
        (&["--tool", "github/get_secret_key"], false, ""),
        (&["--tool", "github/delete_repo"], false, ""),
        (&["--tool", "other/get_issue"], false, ""),
        (
            &["--credential", "github", "--host", "api.github.com"],
            true,
            "",
        ),
        (&["--credential", "github", "--host", "evil.com"], false, ""),
        (
            &["--credential", "nope", "--host", "api.github.com"],
            false,
            "",
        ),
    ];
    for (args, allow, rule) in cases {
        let mut full = vec!["policy", "explain", "--policy", "policy.toml", "--json"];
        full.extend_from_slice(args);
        let out = warden(&full, dir.path());
        let code = out.status.code();
        assert_eq!(
            code,
            Some(if *allow { 0 } else { 1 }),
            "{args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(
            v["decision"],
            if *allow { "allow" } else { "deny" },
            "{args:?}"
        );
        if !rule.is_empty() {
            assert_eq!(v["rule"], *rule, "{args:?}: {v}");
        }
        assert!(
            v["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{args:?}"
        );
    }
}

#[test]
fn explain_human_output_and_default_preset() {
    let dir = tempfile::tempdir().unwrap();
    let out = warden(
        &["policy", "explain", "--net", "api.anthropic.com"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("allow  preset:balanced:"),
        "{}",
        stdout(&out)
    );
    let out = warden(&["policy", "explain", "--net", "exfil.example"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with("deny  default deny"),
        "{}",
        stdout(&out)
    );
    let out = warden(
        &[
            "policy",
            "explain",
            "--preset",
            "locked",
            "--net",
            "api.anthropic.com",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn explain_usage_errors_exit_2_and_bad_policy_125() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["policy", "explain"][..],
        &["policy", "explain", "--net", "a.com:99999"],
        &["policy", "explain", "--net", "a.com", "--tool", "x/y"],
        &["policy", "explain", "--tool", "no-slash"],
        &["policy", "explain", "--tool", "a/b", "--args", "[1]"],
        &["policy", "init", "--preset", "wide-open", "-"],
    ] {
        let out = warden(args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    std::fs::write(
        dir.path().join("bad.toml"),
        "version = 1\n[network]\nallow = [\"a@b.com\"]\n",
    )
    .unwrap();
    let out = warden(
        &[
            "policy", "explain", "--policy", "bad.toml", "--net", "a.com",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("bad.toml:3:"), "{}", stderr(&out));
}

#[test]
fn check_reports_every_error_with_position_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.toml"), POLICY).unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "version = 1\n[network]\nalow = [\"x.com\"]\n[filesystem]\nworkspace = \"rx\"\n",
    )
    .unwrap();
    let out = warden(&["policy", "check", "good.toml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("good.toml: ok (cli-test@"),
        "{}",
        stdout(&out)
    );

    let out = warden(&["policy", "check", "good.toml", "bad.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml:3:1: error: unknown key `alow`"),
        "{err}"
    );
    assert!(err.contains("did you mean `allow`?"), "{err}");
    assert!(err.contains("bad.toml:5:13:"), "{err}");

    let out = warden(&["policy", "check", "--json", "bad.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["ok"], false);
    assert_eq!(v[0]["errors"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v[0]["errors"][0]["line"], 3);
    assert_eq!(v[0]["errors"][0]["hint"], "did you mean `allow`?");
}

#[test]
fn init_writes_each_preset_and_never_clobbers() {
    let dir = tempfile::tempdir().unwrap();
    for preset in ["open", "balanced", "locked"] {
        let file = format!("{preset}.toml");
        let out = warden(&["policy", "init", "--preset", preset, &file], dir.path());
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let out = warden(&["policy", "check", &file], dir.path());
        assert_eq!(out.status.code(), Some(0), "{preset}: {}", stderr(&out));
        // A second init must not overwrite the user's edits.
        std::fs::write(dir.path().join(&file), "# mine\n").unwrap();
        let out = warden(&["policy", "init", "--preset", preset, &file], dir.path());
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
        assert_eq!(
            std::fs::read_to_string(dir.path().join(&file)).unwrap(),
            "# mine\n"
        );
        let out = warden(
            &["policy", "init", "--force", "--preset", preset, &file],
            dir.path(),
        );
        assert_eq!(out.status.code(), Some(0));
    }
    let out = warden(&["policy", "init", "-"], dir.path());
    assert!(stdout(&out).contains("name = \"balanced\""));
}
