//! Load tool: N simulated machines against a real `warden-control` server running in
//! its own process on loopback. Each machine enrolls, holds the node stream, fetches
//! its signed bundle whenever notified, and uploads audit events.
//!
//! ```text
//! cargo run --release -p warden-agent --example load -- --machines 10000 --events 20
//!     [--database postgres://…] [--fetch]
//! ```
//!
//! `--fetch`: machines ignore the bundle a stream notice carries and fetch it with
//! `GET /api/v1/node/bundle` (the path of a node whose server sends bare notices).
//!
//! Prints: time for one push to reach every machine (each has the new bundle and has
//! verified it: from the stream notice, or fetched when a notice carries none),
//! audit ingest in events per second, and the server's peak memory and CPU time.
//! Only loopback addresses are used; every loop is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use ed25519_dalek::SigningKey;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use warden_control::client::{Auth, Client, SseParser};
use warden_control::proto::{EnrollResponse, SignedBundle, StreamNotice, decode_public_key};

const ADMIN: &str = "wdn_load_admin_token_000000000000000000";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn proc_stats(pid: u32) -> (u64, u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (kb("VmRSS:"), kb("VmHWM:"), ticks as f64 / 100.0)
}

fn serve(dir: &str, addr: &str, database: Option<String>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = warden_control::Config::new(addr.parse().unwrap(), dir.into());
        c.admin_token = Some(ADMIN.into());
        c.database = database;
        let s = warden_control::start(c).await.unwrap();
        s.wait().await;
    });
}

fn raise_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let max = cur.maximum.unwrap_or(1 << 20);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(max),
            maximum: Some(max),
        },
    );
}

fn main() {
    raise_nofile();
    if let Some(dir) = arg("--serve") {
        serve(&dir, &arg("--addr").unwrap(), arg("--database"));
        return;
    }
    let n: usize = arg("--machines").map_or(1000, |v| v.parse().unwrap());
    let events: usize = arg("--events").map_or(20, |v| v.parse().unwrap());
    let database = arg("--database");
    let fetch = std::env::args().any(|a| a == "--fetch");
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--serve", dir.path().to_str().unwrap(), "--addr", &addr]);
    if let Some(db) = &database {
        cmd.args(["--database", db]);
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n, events, format!("http://{addr}"), pid, fetch));
    let _ = child.kill();
    let _ = child.wait();
}

async fn run(n: usize, events: usize, base: String, pid: u32, fetch: bool) {
    let admin = Client::new(&base, Auth::Bearer(ADMIN.into())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !admin
        .get("/healthz")
        .await
        .is_ok_and(|a| a.status.as_u16() == 200)
    {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let source =
        |host: &str| format!("version = 1\nname = \"load\"\n[network]\nallow = [\"{host}\"]\n");
    admin
        .post_json("/api/v1/policies", &json!({"source": source("a.example")}))
        .await
        .unwrap()
        .ok()
        .unwrap();

    // Enroll.
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..n {
        let sem = sem.clone();
        let base = base.clone();
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let t: Value = admin
                .post_json("/api/v1/tokens", &json!({"role": "enroll"}))
                .await
                .unwrap()
                .json()
                .unwrap();
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let key = SigningKey::from_bytes(&seed);
            let pk =
                base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes());
            let r: EnrollResponse = Client::new(&base, Auth::None)
                .unwrap()
                .post_json(
                    "/api/v1/enroll",
                    &json!({"token": t["token"], "public_key": pk}),
                )
                .await
                .unwrap()
                .json()
                .unwrap();
            (r.machine_id, key, r.server_public_key)
        }));
    }
    let mut machines = Vec::with_capacity(n);
    for t in tasks {
        machines.push(t.await.unwrap());
    }
    println!("enrolled {n} machines in {:.1?}", t0.elapsed());

    // Hold the streams.
    let target = Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
    let reached = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let push_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let last = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let mut clients = Vec::with_capacity(n);
    let fetch_slots = Arc::new(Semaphore::new(4000));
    for (id, key, server_key) in machines {
        let machine_id = id.clone();
        let c = Client::new(
            &base,
            Auth::Machine {
                id,
                key: Box::new(key),
            },
        )
        .unwrap()
        .without_keepalive()
        .unwrap();
        clients.push(c.clone());
        let (target, reached, connected, push_at, last) = (
            target.clone(),
            reached.clone(),
            connected.clone(),
            push_at.clone(),
            last.clone(),
        );
        let pinned = decode_public_key(&server_key).unwrap();
        let fetch_slots = fetch_slots.clone();
        tokio::spawn(async move {
            let resp = loop {
                match c.open_stream("/api/v1/node/stream").await {
                    Ok(r) => break r,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            connected.fetch_add(1, Ordering::Relaxed);
            let mut body = resp.into_body();
            let mut parser = SseParser::default();
            let mut done = false;
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                for (_, d) in parser.feed(&data) {
                    let notice: StreamNotice = serde_json::from_str(&d).unwrap();
                    let serial = notice.serial;
                    if !done && serial >= target.load(Ordering::Relaxed) {
                        // The notice carries the signed bundle: verify it against the
                        // pinned key and check it is this machine's, as the agent does.
                        if let Some(b) = notice.bundle.as_ref().filter(|_| !fetch) {
                            let p = b.verify(&pinned).unwrap();
                            assert!(p.serial >= serial && p.machine == machine_id);
                            assert!(p.policy.unwrap().source.contains("b.example"));
                            done = true;
                            if let Some(at) = *push_at.lock().unwrap() {
                                let mut l = last.lock().unwrap();
                                *l = (*l).max(at.elapsed());
                            }
                            reached.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        // 10,000 fetches at once overflow the listen backlog; a
                        // refused connect is retried, as the agent's resync would.
                        // This process may hold at most 20,000 descriptors (hard
                        // limit here): 10,000 streams plus at most 4,000 fetches at once.
                        let _permit = fetch_slots.acquire().await.unwrap();
                        let mut tries = 0;
                        let b: SignedBundle = loop {
                            match c.get("/api/v1/node/bundle").await {
                                Ok(a) => break a.json().unwrap(),
                                Err(e) => {
                                    tries += 1;
                                    assert!(tries < 50, "bundle fetch: {e}");
                                    tokio::time::sleep(Duration::from_millis(20 * tries)).await;
                                }
                            }
                        };
                        let p = b.verify(&pinned).unwrap();
                        assert!(p.serial >= serial && p.machine == machine_id);
                        done = true;
                        if let Some(at) = *push_at.lock().unwrap() {
                            let mut l = last.lock().unwrap();
                            *l = (*l).max(at.elapsed());
                        }
                        reached.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while connected.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "streams did not all connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss, _, cpu_idle) = proc_stats(pid);
    println!(
        "{n} streams open; server RSS {} MiB, CPU so far {cpu_idle:.1} s",
        rss / 1024
    );

    // One push.
    let cpu0 = proc_stats(pid).2;
    target.store(2, Ordering::Relaxed);
    *push_at.lock().unwrap() = Some(Instant::now());
    admin
        .post_json("/api/v1/policies", &json!({"source": source("b.example")}))
        .await
        .unwrap()
        .ok()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while reached.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "push did not reach everyone");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fanout = *last.lock().unwrap();
    let cpu1 = proc_stats(pid).2;
    // The server's own view: from the change to the last notice built (signed) for a
    // stream; the rest of the wall time is delivery and the machines' verification.
    let metrics = String::from_utf8_lossy(&admin.get("/metrics").await.unwrap().body).into_owned();
    let server_max = metrics
        .lines()
        .find_map(|l| l.strip_prefix("warden_push_fanout_seconds_max "))
        .unwrap_or("?")
        .to_string();
    println!("server: last notice built {server_max} s after the change");
    println!(
        "push reached all {n} machines (each holds the new signed bundle, verified) in {:.3} s; \
         server CPU {:.2} s",
        fanout.as_secs_f64(),
        cpu1 - cpu0
    );

    // Audit ingest.
    let total = n * events;
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let c = c.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let evs: Vec<Value> = (0..events)
                .map(|j| {
                    json!({
                        "time": "2026-11-30T03:00:00.123456Z", "id": format!("ev-{i}-{j}"),
                        "session": format!("s-{i}"), "machine": "x", "user": "load",
                        "surface": "network", "action": "connect", "target": "b.example:443",
                        "decision": "allow", "enforced": true, "rule": "policy.toml:4",
                        "reason": "in network.allow", "policy": "load@x",
                    })
                })
                .collect();
            for chunk in evs.chunks(500) {
                c.post_json("/api/v1/node/audit", &json!({"events": chunk}))
                    .await
                    .unwrap()
                    .ok()
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu2 = proc_stats(pid).2;
    let (rss, hwm, _) = proc_stats(pid);
    println!(
        "audit: {total} events from {n} machines in {secs:.2} s = {:.0} events/s; server CPU {:.2} s",
        total as f64 / secs,
        cpu2 - cpu1
    );
    println!(
        "server memory: RSS {} MiB, peak {} MiB",
        rss / 1024,
        hwm / 1024
    );
}
