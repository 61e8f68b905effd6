//! One Connect decision against a policy with 10,000 host entries (exact, `*.`, `**.`)
//! and 100 Cedar rules. Target (ENGINEERING.md): median ≤ 5 µs.
//!
//! Criterion reports the mean/median of batches; a separate loop times single
//! decisions and prints p50/p90/p99, since tail latency is what a proxy feels.

// A benchmark's setup failing should stop it loudly, like a test.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use warden_policy::{Policy, Principal, Request};

fn build(dir: &std::path::Path) -> Policy {
    let mut allow = String::new();
    for i in 0..10_000 {
        let entry = match i % 5 {
            0..=2 => format!("api-{i}.example.com"),
            3 => format!("*.tenant-{i}.example.net"),
            _ => format!("**.cdn-{i}.example.org"),
        };
        let _ = writeln!(allow, "  \"{entry}\",");
    }
    let mut cedar = String::new();
    // 60 rules about specific hosts, 10 general connect rules (8 about the principal
    // only, 2 reading the request's context, so every Connect evaluates Cedar), 30 for
    // other actions.
    for i in 0..60 {
        let _ = writeln!(
            cedar,
            "permit (principal, action == Warden::Action::\"connect\", resource == Warden::Host::\"svc-{i}.internal\")\nwhen {{ context.port == 5432 && principal.labels has team }};"
        );
    }
    for i in 0..8 {
        let _ = writeln!(
            cedar,
            "forbid (principal, action == Warden::Action::\"connect\", resource)\nwhen {{ principal.user == \"blocked-user-{i}\" }};"
        );
    }
    for port in [25, 6667] {
        let _ = writeln!(
            cedar,
            "forbid (principal, action == Warden::Action::\"connect\", resource)\nwhen {{ context.port == {port} && !(principal.labels has smtp) }};"
        );
    }
    for i in 0..10 {
        let _ = writeln!(
            cedar,
            "forbid (principal, action == Warden::Action::\"http\", resource)\nwhen {{ context.path like \"/admin-{i}/*\" }};"
        );
        let _ = writeln!(
            cedar,
            "forbid (principal, action == Warden::Action::\"call_tool\", resource)\nwhen {{ context.tool == \"drop_table_{i}\" }};"
        );
        let _ = writeln!(
            cedar,
            "forbid (principal, action == Warden::Action::\"mount\", resource)\nwhen {{ resource.path like \"/secret-{i}/*\" }};"
        );
    }
    std::fs::write(dir.join("rules.cedar"), cedar).unwrap();
    let src = format!(
        "version = 1\nname = \"bench\"\n[network]\nallow = [\n{allow}]\ndeny = [\"bad.example.com\"]\n[cedar]\nfiles = [\"rules.cedar\"]\n"
    );
    std::fs::write(dir.join("policy.toml"), src).unwrap();
    Policy::load(&dir.join("policy.toml")).unwrap()
}

fn principal() -> Principal {
    Principal {
        session: "sess-0123456789".into(),
        user: "alice".into(),
        machine: "machine-01".into(),
        agent: "claude".into(),
        labels: [("team".to_owned(), "infra".to_owned())]
            .into_iter()
            .collect(),
    }
}

const HOSTS: [&str; 4] = [
    "api-5000.example.com",       // exact
    "x.tenant-5003.example.net",  // one label
    "a.b.c.cdn-5004.example.org", // any depth
    "not-allowed.example.com",    // default deny
];

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let policy = build(dir.path());
    let who = principal();
    for h in HOSTS {
        let d = policy.decide(&who, &Request::Connect { host: h, port: 443 });
        println!("{h}: allow={} rule={}", d.allow, d.rule);
    }
    c.bench_function("decide/connect 10k hosts + 100 cedar", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = i.wrapping_add(1);
            let host = HOSTS[i % HOSTS.len()];
            black_box(policy.decide(
                &who,
                &Request::Connect {
                    host: black_box(host),
                    port: 443,
                },
            ))
        })
    });

    // Single-decision latencies, for percentiles.
    let n = 200_000;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let host = HOSTS[i % HOSTS.len()];
        let t = Instant::now();
        black_box(policy.decide(
            &who,
            &Request::Connect {
                host: black_box(host),
                port: 443,
            },
        ));
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let pct = |q: f64| samples[((n as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    println!(
        "decide/connect single-call latency over {n} calls: p50 {:.2} µs, p90 {:.2} µs, p99 {:.2} µs, max {:.2} µs",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
