//! warden-audit integration tests: one binary (see ENGINEERING.md).

// Test helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use warden_audit::{
    AuditError, AuditLog, Event, Filter, LogReader, Stamp, Surface, Verdict, read_events,
};

fn stamp() -> Stamp {
    Stamp {
        session: "sess-1".into(),
        machine: "machine-1".into(),
        user: "alice".into(),
        policy: "team-default@3f2a9c".into(),
    }
}

fn deny() -> Event {
    Event::new(
        Surface::Network,
        "connect",
        "uploads.github.com:443",
        Verdict::Deny,
    )
    .rule("policy.toml:12")
    .reason("not in network.allow")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn log_and_ticket_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<AuditLog>();
    send_sync::<warden_audit::Ticket>();
}

#[test]
fn round_trip_of_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    let event = Event::new(
        Surface::Mcp,
        "call_tool",
        "github/delete_repo",
        Verdict::Deny,
    )
    .rule("policy.toml:40")
    .reason("in tools.deny")
    .enforced(false)
    .field("bytes_in", 1234)
    .field("duration_ms", 1.5)
    .field("exit_status", serde_json::Value::Null)
    .field("args", serde_json::json!({"repo": "acme/x", "force": true}))
    .field("note", "ünïcode \"quoted\"\nnewline");
    log.record_durable(&stamp(), event.clone()).unwrap();

    let (events, report) = read_events(&path).unwrap();
    assert!(report.skipped.is_empty() && !report.torn_tail);
    assert_eq!(events.len(), 1);
    let got = &events[0];
    assert_eq!(got.surface, Surface::Mcp);
    assert_eq!(got.action, "call_tool");
    assert_eq!(got.target, "github/delete_repo");
    assert_eq!(got.decision, Verdict::Deny);
    assert!(!got.enforced);
    assert_eq!(got.rule, "policy.toml:40");
    assert_eq!(got.reason, "in tools.deny");
    assert_eq!(got.session, "sess-1");
    assert_eq!(got.machine, "machine-1");
    assert_eq!(got.user, "alice");
    assert_eq!(got.policy, "team-default@3f2a9c");
    assert_eq!(got.id.len(), 26);
    assert_eq!(got.extra, event.extra);
    // Everything read back is equal to what was written, including time and id.
    let again: Event = serde_json::from_str(&lines(&path)[0]).unwrap();
    assert_eq!(&again, got);
    assert_eq!(serde_json::to_string(got).unwrap(), lines(&path)[0]);
}

#[test]
fn json_shape_is_spec_section_5() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    log.record_durable(&stamp(), deny().field("bytes_in", 0))
        .unwrap();
    let line = &lines(&path)[0];
    assert!(!line.contains('\n'));

    // Required keys first, in the order of SPEC §5, then the extras.
    let keys: Vec<String> = {
        let value: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        // serde_json's Map is sorted; recover the written order from the text.
        let mut keys: Vec<(usize, String)> = value
            .keys()
            .map(|k| (line.find(&format!("\"{k}\":")).unwrap(), k.clone()))
            .collect();
        keys.sort();
        keys.into_iter().map(|(_, k)| k).collect()
    };
    assert_eq!(
        keys,
        [
            "time", "id", "session", "machine", "user", "surface", "action", "target", "decision",
            "enforced", "rule", "reason", "policy", "bytes_in"
        ]
    );
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["surface"], "network");
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["enforced"], true);
    assert_eq!(v["target"], "uploads.github.com:443");
    assert_eq!(v["rule"], "policy.toml:12");
    assert_eq!(v["policy"], "team-default@3f2a9c");
    // "2026-11-30T03:00:00.123456Z": RFC 3339, UTC, microseconds.
    let time = v["time"].as_str().unwrap();
    assert_eq!(time.len(), 27, "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
    for s in ["session", "network", "filesystem", "credential", "mcp"] {
        let surface: Surface = serde_json::from_value(serde_json::json!(s)).unwrap();
        assert_eq!(serde_json::to_value(surface).unwrap(), s);
    }
}

#[test]
fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/audit.jsonl");
    let _log = AuditLog::open(&path).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("a/b")), 0o700);
    assert_eq!(mode(&dir.path().join("a")), 0o700);
}

#[test]
fn appends_to_an_existing_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    AuditLog::open(&path)
        .unwrap()
        .record_durable(&stamp(), deny())
        .unwrap();
    AuditLog::open(&path)
        .unwrap()
        .record_durable(&stamp(), deny())
        .unwrap();
    let (events, _) = read_events(&path).unwrap();
    assert_eq!(events.len(), 2);
    assert_ne!(events[0].id, events[1].id);
}

#[test]
fn concurrent_records_make_whole_lines_with_unique_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let log = log.clone();
            s.spawn(move || {
                for i in 0..1000 {
                    let e = deny().field("thread", t).field("i", i);
                    // Mix waiting and non-waiting callers.
                    if i % 100 == 0 {
                        log.record_durable(&stamp(), e).unwrap();
                    } else {
                        drop(log.record(&stamp(), e).unwrap());
                    }
                }
            });
        }
    });
    log.flush().unwrap();
    let all = lines(&path);
    assert_eq!(all.len(), 8000);
    let mut ids = HashSet::new();
    for line in &all {
        let e: Event = serde_json::from_str(line).unwrap();
        assert!(ids.insert(e.id));
    }
    let (events, report) = read_events(&path).unwrap();
    assert_eq!(events.len(), 8000);
    assert!(report.skipped.is_empty() && !report.torn_tail);
    // Each thread's own events stay in its order.
    for t in 0..8 {
        let seq: Vec<i64> = events
            .iter()
            .filter(|e| e.extra["thread"] == t)
            .map(|e| e.extra["i"].as_i64().unwrap())
            .collect();
        assert_eq!(seq, (0..1000).collect::<Vec<_>>());
    }
}

#[test]
fn unwaited_event_reaches_the_file_without_anyone_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    let _ticket = log.record(&stamp(), deny()).unwrap();
    // The bound is ~100 ms; 1 s of slack keeps this from flaking on a loaded machine.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lines(&path).len(), 1);
}

#[test]
fn flush_makes_queued_events_visible_now() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    for _ in 0..10 {
        drop(log.record(&stamp(), deny()).unwrap());
    }
    log.flush().unwrap();
    assert_eq!(lines(&path).len(), 10);
    // A ticket waited on is likewise on disk when wait returns.
    log.record(&stamp(), deny()).unwrap().wait().unwrap();
    assert_eq!(lines(&path).len(), 11);
}

/// Drive a future to completion on this thread (the crate has no async runtime).
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn durable_futures_resolve_once_their_events_are_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    // Several tickets in flight at once, awaited in reverse order: each resolves with
    // its event in the file.
    let durables: Vec<_> = (0..8)
        .map(|i| {
            let t = log.record(&stamp(), deny().field("n", i)).unwrap();
            (t.id().to_string(), t.durable())
        })
        .collect();
    for (id, d) in durables.into_iter().rev() {
        block_on(d).unwrap();
        assert!(
            lines(&path).iter().any(|l| l.contains(&id)),
            "{id} not in the file when its future resolved"
        );
    }
    // A future is Send, so async code can hold it across an await on any runtime.
    fn send<T: Send>(_: &T) {}
    let d = log.record(&stamp(), deny()).unwrap().durable();
    send(&d);
    block_on(d).unwrap();
    assert_eq!(lines(&path).len(), 9);
}

#[test]
fn dropping_the_log_drains_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    let clone = log.clone();
    for _ in 0..100 {
        drop(clone.record(&stamp(), deny()).unwrap());
    }
    drop(clone);
    drop(log);
    assert_eq!(lines(&path).len(), 100);
}

#[test]
fn write_failure_is_reported_to_waiters_and_later_callers() {
    // /dev/full accepts the open and fails every write with ENOSPC.
    let path = Path::new("/dev/full");
    if !path.exists() {
        eprintln!("skipped: no /dev/full");
        return;
    }
    let log = AuditLog::open(path).unwrap();
    // The appender writes the line itself, so it hears of the failure at once ...
    let err = log.record(&stamp(), deny()).unwrap_err();
    assert!(matches!(err, AuditError::Write { .. }), "{err}");
    assert!(err.to_string().contains("/dev/full"), "{err}");
    // ... and so does everyone after it: nothing more is written, nothing acked.
    assert!(log.record_durable(&stamp(), deny()).is_err());
    assert!(log.record(&stamp(), deny()).is_err());
    assert!(log.flush().is_err());
}

#[test]
fn torn_last_line_is_reported_and_earlier_events_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    for _ in 0..3 {
        log.record_durable(&stamp(), deny()).unwrap();
    }
    drop(log);
    let whole = std::fs::read_to_string(&path).unwrap();
    let third = whole.lines().nth(2).unwrap();
    // Cut the last line in half, as a crash mid-write would.
    let cut = whole.len() - third.len() / 2;
    std::fs::write(&path, &whole[..cut]).unwrap();

    let (events, report) = read_events(&path).unwrap();
    assert_eq!(events.len(), 2);
    assert!(report.torn_tail);
    assert!(report.skipped.is_empty());

    // Reopening for append ends the torn line first, so the next event is whole and
    // the torn one becomes a reported garbled line.
    let log = AuditLog::open(&path).unwrap();
    log.record_durable(&stamp(), deny().field("after", true))
        .unwrap();
    let (events, report) = read_events(&path).unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].extra["after"], true);
    assert!(!report.torn_tail);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].line, 3);
}

#[test]
fn garbled_middle_lines_are_skipped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    log.record_durable(&stamp(), deny()).unwrap();
    drop(log);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"{\"not\":\"an event\"}\n\xff\xfe garbage\n\n")
        .unwrap();
    drop(f);
    let log = AuditLog::open(&path).unwrap();
    log.record_durable(&stamp(), deny()).unwrap();
    let (events, report) = read_events(&path).unwrap();
    assert_eq!(events.len(), 2);
    let bad: Vec<u64> = report.skipped.iter().map(|s| s.line).collect();
    assert_eq!(bad, [2, 3]);
    assert!(!report.torn_tail);
}

#[test]
fn a_complete_last_line_without_newline_still_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    AuditLog::open(&path)
        .unwrap()
        .record_durable(&stamp(), deny())
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.trim_end()).unwrap();
    let (events, report) = read_events(&path).unwrap();
    assert_eq!(events.len(), 1);
    assert!(!report.torn_tail);
}

#[test]
fn follower_holds_back_a_partial_line_until_it_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    AuditLog::open(&path)
        .unwrap()
        .record_durable(&stamp(), deny())
        .unwrap();
    let line = lines(&path).remove(0);
    let mut reader = LogReader::open(&path).unwrap();
    let mut seen = Vec::new();
    reader.read_new(|e| seen.push(e.line)).unwrap();
    assert_eq!(seen.len(), 1);

    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&line.as_bytes()[..10]).unwrap();
    assert_eq!(reader.read_new(|e| seen.push(e.line)).unwrap(), 0);
    f.write_all(&line.as_bytes()[10..]).unwrap();
    f.write_all(b"\n").unwrap();
    assert_eq!(reader.read_new(|e| seen.push(e.line)).unwrap(), 1);
    assert_eq!(seen[1], line);
    assert!(reader.report().skipped.is_empty());

    // A truncated (rotated) file is read again from the start.
    std::fs::write(&path, format!("{line}\n")).unwrap();
    assert!(reader.reopen_if_replaced().unwrap());
    assert_eq!(reader.read_new(|e| seen.push(e.line)).unwrap(), 1);
}

#[test]
fn filter_selects_by_every_cli_option() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    let other = Stamp {
        session: "sess-2".into(),
        ..stamp()
    };
    log.record(&stamp(), deny()).unwrap().wait().unwrap();
    let cutoff = warden_audit::OffsetDateTime::now_utc();
    std::thread::sleep(Duration::from_millis(5));
    log.record(
        &other,
        Event::new(Surface::Filesystem, "mount", "/work", Verdict::Allow),
    )
    .unwrap()
    .wait()
    .unwrap();
    log.record_durable(
        &other,
        Event::new(Surface::Mcp, "call_tool", "gh/x", Verdict::Deny),
    )
    .unwrap();
    let (events, _) = read_events(&path).unwrap();
    let count = |f: Filter| events.iter().filter(|e| f.matches(e)).count();
    assert_eq!(count(Filter::default()), 3);
    assert_eq!(
        count(Filter {
            decision: Some(Verdict::Deny),
            ..Default::default()
        }),
        2
    );
    assert_eq!(
        count(Filter {
            surface: Some(Surface::Mcp),
            ..Default::default()
        }),
        1
    );
    assert_eq!(
        count(Filter {
            session: Some("sess-2".into()),
            ..Default::default()
        }),
        2
    );
    assert_eq!(
        count(Filter {
            since: Some(cutoff),
            ..Default::default()
        }),
        2
    );
    assert_eq!(
        count(Filter {
            session: Some("sess-2".into()),
            decision: Some(Verdict::Deny),
            ..Default::default()
        }),
        1
    );
}

/// Child half of the crash test: selected by an environment variable, it records
/// events durably and prints each acknowledged id, until it is killed.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os("WARDEN_AUDIT_CRASH_CHILD") else {
        return;
    };
    let log = AuditLog::open(Path::new(&path)).unwrap();
    // Background writers keep the writer thread busy so the kill lands mid-commit.
    for t in 0..2 {
        let log = log.clone();
        std::thread::spawn(move || {
            loop {
                drop(log.record(&stamp(), deny().field("noise", t)).unwrap());
            }
        });
    }
    let mut out = std::io::stdout().lock();
    loop {
        // Recorded, not waited for: written before `record` returned, so it must
        // survive the kill as well (only a machine crash may take the unsynced tail).
        let ticket = log
            .record(&stamp(), deny().field("recorded", true))
            .unwrap();
        writeln!(out, "REC {}", ticket.id()).unwrap();
        drop(ticket);
        let mut event = deny().field("acked", true);
        event = event.field("pad", "x".repeat(300));
        let ticket = log.record(&stamp(), event).unwrap();
        let id = ticket.id().to_string();
        ticket.wait().unwrap();
        writeln!(out, "ACK {id}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn every_recorded_event_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("WARDEN_AUDIT_CRASH_CHILD", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    let mut recorded = Vec::new();
    let started = Instant::now();
    let mut line = String::new();
    while (acked.len() < 30 || recorded.len() < 30) && started.elapsed() < Duration::from_secs(60) {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(id) = line.trim().strip_prefix("ACK ") {
            acked.push(id.to_string());
        } else if let Some(id) = line.trim().strip_prefix("REC ") {
            recorded.push(id.to_string());
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Acks printed before the kill count too.
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(id) = line.trim().strip_prefix("ACK ") {
            acked.push(id.to_string());
        } else if let Some(id) = line.trim().strip_prefix("REC ") {
            recorded.push(id.to_string());
        }
    }
    assert!(acked.len() >= 30, "child acknowledged only {}", acked.len());
    assert!(
        recorded.len() >= 30,
        "child recorded only {}",
        recorded.len()
    );

    let (events, report) = read_events(&path).unwrap();
    let on_disk: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    for id in &acked {
        assert!(on_disk.contains(id.as_str()), "acknowledged {id} lost");
    }
    for id in &recorded {
        assert!(on_disk.contains(id.as_str()), "recorded {id} lost");
    }
    assert!(report.skipped.is_empty(), "{report:?}");
    eprintln!(
        "{} acked, {} events on disk, torn tail: {}",
        acked.len(),
        events.len(),
        report.torn_tail
    );
}

/// Throughput of `record` and latency of `record_durable`, on the disk that holds
/// the target directory (not /tmp, which may be tmpfs where fsync is free). Run:
/// `cargo test -p warden-audit --release --test all -- --ignored --nocapture bench`
#[test]
#[ignore = "benchmark; run explicitly with --ignored --nocapture"]
fn bench_record_throughput_and_durable_latency() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();

    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..4 {
            let log = log.clone();
            s.spawn(move || {
                for i in 0..25_000 {
                    drop(
                        log.record(&stamp(), deny().field("t", t).field("i", i))
                            .unwrap(),
                    );
                }
            });
        }
    });
    let queued = start.elapsed();
    log.flush().unwrap();
    let flushed = start.elapsed();
    println!(
        "record: 100000 events from 4 threads queued in {:.1} ms = {:.0} events/s; \
         all fsynced after {:.1} ms = {:.0} events/s",
        queued.as_secs_f64() * 1e3,
        100_000.0 / queued.as_secs_f64(),
        flushed.as_secs_f64() * 1e3,
        100_000.0 / flushed.as_secs_f64(),
    );

    let mut lat: Vec<Duration> = (0..500)
        .map(|_| {
            let t = Instant::now();
            log.record_durable(&stamp(), deny()).unwrap();
            t.elapsed()
        })
        .collect();
    lat.sort();
    println!(
        "record_durable, one thread: median {:.0} µs, p90 {:.0} µs, p99 {:.0} µs (500 calls)",
        lat[250].as_secs_f64() * 1e6,
        lat[450].as_secs_f64() * 1e6,
        lat[495].as_secs_f64() * 1e6,
    );

    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..8 {
            let log = log.clone();
            s.spawn(move || {
                for _ in 0..250 {
                    log.record_durable(&stamp(), deny()).unwrap();
                }
            });
        }
    });
    let took = start.elapsed();
    println!(
        "record_durable, 8 threads x 250: {:.0} durable events/s (group commit)",
        2000.0 / took.as_secs_f64()
    );
}
