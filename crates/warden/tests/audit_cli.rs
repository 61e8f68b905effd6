//! `warden audit` end to end: the real binary over a log written by warden-audit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use warden_audit::{AuditLog, Event, Stamp, Surface, Verdict};

fn stamp(session: &str) -> Stamp {
    Stamp {
        session: session.into(),
        machine: "m1".into(),
        user: "alice".into(),
        policy: "team@abc".into(),
    }
}

/// Four events: s1 network deny, s1 filesystem allow, s2 mcp deny (audit mode),
/// s2 network allow.
fn write_log(path: &Path) {
    let log = AuditLog::open(path).unwrap();
    let events = [
        (
            "s1",
            Event::new(
                Surface::Network,
                "connect",
                "evil.example:443",
                Verdict::Deny,
            )
            .rule("policy.toml:12")
            .reason("not in network.allow"),
        ),
        (
            "s1",
            Event::new(Surface::Filesystem, "mount", "/work", Verdict::Allow).rule("workspace"),
        ),
        (
            "s2",
            Event::new(
                Surface::Mcp,
                "call_tool",
                "github/delete_repo",
                Verdict::Deny,
            )
            .enforced(false)
            .rule("policy.toml:40"),
        ),
        (
            "s2",
            Event::new(
                Surface::Network,
                "connect",
                "api.github.com:443",
                Verdict::Allow,
            ),
        ),
    ];
    for (session, event) in events {
        log.record_durable(&stamp(session), event).unwrap();
    }
}

fn warden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .env_remove("WARDEN_SERVER")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn targets(out: &Output) -> Vec<String> {
    stdout_lines(out)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["target"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn query_filters_and_prints_raw_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    write_log(&file);
    let f = file.to_str().unwrap();

    let out = warden(&["audit", "query", "--file", f, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let on_disk: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(stdout_lines(&out), on_disk);

    let out = warden(&[
        "audit",
        "query",
        "--file",
        f,
        "--json",
        "--decision",
        "deny",
    ]);
    assert_eq!(targets(&out), ["evil.example:443", "github/delete_repo"]);
    let out = warden(&[
        "audit",
        "query",
        "--file",
        f,
        "--json",
        "--surface",
        "network",
    ]);
    assert_eq!(targets(&out), ["evil.example:443", "api.github.com:443"]);
    let out = warden(&[
        "audit",
        "query",
        "--file",
        f,
        "--json",
        "--session",
        "s2",
        "--decision",
        "allow",
    ]);
    assert_eq!(targets(&out), ["api.github.com:443"]);
    let out = warden(&["audit", "query", "--file", f, "--json", "--since", "1h"]);
    assert_eq!(targets(&out).len(), 4);

    // Nothing matching is not a failure.
    let out = warden(&[
        "audit",
        "query",
        "--file",
        f,
        "--since",
        "2999-01-01T00:00:00Z",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
}

#[test]
fn human_output_is_one_aligned_line_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    write_log(&file);
    let out = warden(&["audit", "query", "--file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 4);
    assert!(
        lines[0].contains("network") && lines[0].contains("DENY"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("evil.example:443") && lines[0].contains("policy.toml:12"));
    assert!(lines[0].ends_with("not in network.allow"), "{}", lines[0]);
    assert!(lines[1].contains("allow"), "{}", lines[1]);
    assert!(lines[2].contains("DENY(audit)"), "{}", lines[2]);
    // Columns line up: the target starts at the same offset on every line.
    let col = |l: &str, t: &str| l.find(t).unwrap();
    assert_eq!(
        col(&lines[0], "evil.example"),
        col(&lines[3], "api.github.com")
    );
    assert_eq!(col(&lines[0], "connect"), col(&lines[2], "call_tool"));
}

#[test]
fn tail_prints_the_newest_and_follows() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    write_log(&file);
    let f = file.to_str().unwrap();

    let out = warden(&[
        "audit",
        "tail",
        "--file",
        f,
        "--json",
        "-n",
        "2",
        "--no-follow",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(targets(&out), ["github/delete_repo", "api.github.com:443"]);

    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "audit",
            "tail",
            "--file",
            f,
            "--json",
            "-n",
            "1",
            "--decision",
            "deny",
        ])
        .env_remove("WARDEN_SERVER")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("github/delete_repo"), "{line}");

    let log = AuditLog::open(&file).unwrap();
    log.record_durable(
        &stamp("s3"),
        Event::new(
            Surface::Network,
            "connect",
            "allowed.example:443",
            Verdict::Allow,
        ),
    )
    .unwrap();
    log.record_durable(
        &stamp("s3"),
        Event::new(
            Surface::Credential,
            "inject",
            "other.example",
            Verdict::Deny,
        ),
    )
    .unwrap();
    line.clear();
    // Blocks until tail prints the next matching event (the allow is filtered out).
    stdout.read_line(&mut line).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.contains("other.example"), "{line}");
}

#[test]
fn bad_filter_values_are_usage_errors_naming_the_value() {
    let cases: [(&[&str], &[&str]); 3] = [
        (&["--surface", "bogus"], &["bogus", "filesystem"]),
        (&["--decision", "block"], &["block", "allow, deny"]),
        (&["--since", "yesterday"], &["yesterday", "10m"]),
    ];
    for (args, needles) in cases {
        let mut argv = vec!["audit", "query", "--file", "/nonexistent/audit.jsonl"];
        argv.extend_from_slice(args);
        let out = warden(&argv);
        assert_eq!(out.status.code(), Some(2), "{argv:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needle in needles {
            assert!(stderr.contains(needle), "{argv:?}: {stderr}");
        }
    }
}

#[test]
fn missing_log_is_empty_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("none.jsonl");
    let out = warden(&["audit", "query", "--file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no audit log"));
}

#[test]
fn central_query_needs_an_api_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["audit", "query", "--server", "https://warden.example"])
        .env_remove("WARDEN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("WARDEN_TOKEN"));
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["audit", "query"])
        .env("WARDEN_SERVER", "https://warden.example")
        .env_remove("WARDEN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("WARDEN_TOKEN"));
}

#[test]
fn tail_waits_for_a_log_that_does_not_exist_yet() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("later/audit.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["audit", "tail", "--json", "--file", file.to_str().unwrap()])
        .env_remove("WARDEN_SERVER")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = AuditLog::open(&file).unwrap();
    log.record_durable(
        &stamp("s9"),
        Event::new(Surface::Session, "start", "claude", Verdict::Allow),
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.contains("\"session\":\"s9\""), "{line}");
}
