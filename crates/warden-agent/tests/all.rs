//! The node agent against a real control-plane server: enrollment, signed bundles
//! (tampered, unsigned, foreign, stale), live push over the stream, spool delivery,
//! and a server killed with SIGKILL in the middle of uploads.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use warden_agent::{AgentOptions, Node, PolicyInForce, SyncOutcome, enrolled_policy};
use warden_control::client::{Auth, Client};
use warden_control::proto::SignedBundle;
use warden_control::{Config, Running};

const ADMIN: &str = "wdn_agent_test_admin_0123456789abcdef";

fn policy(name: &str, host: &str) -> String {
    format!("version = 1\nname = \"{name}\"\n[network]\nallow = [\"{host}\"]\n")
}

async fn start(dir: &Path) -> Running {
    let mut c = Config::new("127.0.0.1:0".parse().unwrap(), dir.join("server"));
    c.admin_token = Some(ADMIN.into());
    warden_control::start(c).await.unwrap()
}

fn admin(base: &str) -> Client {
    Client::new(base, Auth::Bearer(ADMIN.into())).unwrap()
}

async fn enroll_token(base: &str) -> String {
    let t: Value = admin(base)
        .post_json(
            "/api/v1/tokens",
            &json!({"role": "enroll", "labels": {"team": "ml"}}),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    t["token"].as_str().unwrap().to_string()
}

async fn push(base: &str, source: &str) -> i64 {
    let v: Value = admin(base)
        .post_json(
            "/api/v1/policies",
            &json!({"source": source, "target": "all"}),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    v["version"].as_i64().unwrap()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn version_in_force(node: &Node) -> Option<i64> {
    match node.policy_in_force().ok()? {
        PolicyInForce::Central(p) => Some(p.version),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_sync_status_and_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let base = format!("http://{}", server.addr);
    let home = dir.path().join("node");
    let node = Node::new(&home);
    assert_eq!(
        enrolled_policy(&home).unwrap(),
        None,
        "standalone before enrolling"
    );
    let token = enroll_token(&base).await;
    let id = node.enroll(&base, &token, "test-host").await.unwrap();
    assert_eq!(id.labels.get("team").map(String::as_str), Some("ml"));
    assert_eq!(
        std::fs::read_to_string(home.join("machine-id"))
            .unwrap()
            .trim(),
        id.machine_id
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home.join("agent/machine.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "private key is owner-only");
    // Enrolled, no bundle yet: fail closed.
    assert!(enrolled_policy(&home).is_err());
    assert!(
        node.enroll(&base, &token, "x").await.is_err(),
        "already enrolled"
    );

    let client = node.client().unwrap();
    // A bundle with no policy assigned: still fail closed.
    assert!(matches!(
        node.sync_bundle(&client).await.unwrap(),
        SyncOutcome::Updated(_)
    ));
    assert!(enrolled_policy(&home).is_err());
    push(&base, &policy("team-default", "api.github.com")).await;
    assert!(matches!(
        node.sync_bundle(&client).await.unwrap(),
        SyncOutcome::Updated(_)
    ));
    assert_eq!(
        node.sync_bundle(&client).await.unwrap(),
        SyncOutcome::NotModified
    );
    let p = enrolled_policy(&home).unwrap().unwrap();
    assert_eq!((p.name.as_str(), p.version), ("team-default", 1));
    assert!(p.origin().contains(&base));
    let status = node.status().unwrap();
    assert!(matches!(status.policy, PolicyInForce::Central(_)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_unsigned_foreign_and_stale_bundles_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let base = format!("http://{}", server.addr);
    let node = Node::new(&dir.path().join("a"));
    node.enroll(&base, &enroll_token(&base).await, "a")
        .await
        .unwrap();
    let other = Node::new(&dir.path().join("b"));
    other
        .enroll(&base, &enroll_token(&base).await, "b")
        .await
        .unwrap();
    push(&base, &policy("team-default", "api.github.com")).await;
    let client = node.client().unwrap();
    node.sync_bundle(&client).await.unwrap();
    let good = node.held_bundle().unwrap().unwrap();
    let raw: SignedBundle = client
        .get("/api/v1/node/bundle")
        .await
        .unwrap()
        .json()
        .unwrap();

    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    // Tampered: the payload now allows everything, the signature is the old one.
    let text = String::from_utf8(b64.decode(&raw.payload).unwrap()).unwrap();
    let evil = text.replace("api.github.com", "*");
    let tampered = SignedBundle {
        payload: b64.encode(&evil),
        signature: raw.signature.clone(),
    };
    assert!(node.accept_bundle(&tampered, None).is_err());
    // Unsigned.
    let unsigned = SignedBundle {
        payload: raw.payload.clone(),
        signature: String::new(),
    };
    assert!(node.accept_bundle(&unsigned, None).is_err());
    // Signed by someone else's key.
    let rogue = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let forged = SignedBundle::sign(&serde_json::from_str(&evil).unwrap(), &rogue).unwrap();
    assert!(node.accept_bundle(&forged, None).is_err());
    // Issued (and validly signed) for another machine.
    let oc = other.client().unwrap();
    let foreign: SignedBundle = oc.get("/api/v1/node/bundle").await.unwrap().json().unwrap();
    assert!(node.accept_bundle(&foreign, None).is_err());
    // The last good bundle is still the one in force.
    assert_eq!(node.held_bundle().unwrap().unwrap(), good);
    // Stale: a newer bundle arrives, then the old one is replayed.
    push(&base, &policy("team-default", "pypi.org")).await;
    node.sync_bundle(&client).await.unwrap();
    assert_eq!(version_in_force(&node), Some(2));
    assert!(
        node.accept_bundle(&raw, None).is_err(),
        "older serial is a rollback"
    );
    assert_eq!(version_in_force(&node), Some(2));
    // The bundle on disk edited by hand no longer verifies: fail closed.
    let path = node.bundle_path();
    let on_disk = std::fs::read_to_string(&path).unwrap();
    let mut v: Value = serde_json::from_str(&on_disk).unwrap();
    v["bundle"]["payload"] = json!(tampered.payload);
    std::fs::write(&path, v.to_string()).unwrap();
    assert!(matches!(
        node.policy_in_force().unwrap(),
        PolicyInForce::None { .. }
    ));
    assert!(enrolled_policy(node.home()).is_err());
    // A sync repairs it (the ETag is not trusted for an unverifiable bundle).
    node.sync_bundle(&client).await.unwrap();
    assert_eq!(version_in_force(&node), Some(2));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_a_connected_agent() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let base = format!("http://{}", server.addr);
    push(&base, &policy("team-default", "api.github.com")).await;
    let node = Node::new(&dir.path().join("n"));
    node.enroll(&base, &enroll_token(&base).await, "n")
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let runner = node.clone();
    let task = tokio::spawn(async move {
        runner
            .run(AgentOptions::default(), async move {
                let _ = rx.await;
            })
            .await
    });
    wait_for("the first bundle", || version_in_force(&node) == Some(1)).await;
    // Connected: now a push must arrive over the stream (the periodic resync is 60 s;
    // the wait below does not assert a time, it waits for the condition).
    let m: Vec<Value> = admin(&base)
        .get("/api/v1/machines")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(m[0]["connected"], true);
    push(&base, &policy("team-default", "pypi.org")).await;
    wait_for("the pushed version", || version_in_force(&node) == Some(2)).await;
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    server.stop().await;
}

fn write_events(spool: &Path, n: usize, tag: &str) {
    let log = warden_audit::AuditLog::open(spool).unwrap();
    let stamp = warden_audit::Stamp {
        session: format!("s-{tag}"),
        machine: "m".into(),
        user: "alice".into(),
        policy: "team-default@x".into(),
    };
    for i in 0..n {
        let ev = warden_audit::Event::new(
            warden_audit::Surface::Network,
            "connect",
            &format!("host-{tag}-{i}.example:443"),
            warden_audit::Verdict::Deny,
        );
        let _ticket = log.record(&stamp, ev).unwrap();
    }
    log.flush().unwrap();
}

async fn central_ids(base: &str) -> Vec<String> {
    let a = admin(base).get("/api/v1/audit/export").await.unwrap();
    a.ok().unwrap();
    String::from_utf8_lossy(&a.body)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_delivery_is_exactly_once_across_retries() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let base = format!("http://{}", server.addr);
    let home = dir.path().join("n");
    let node = Node::new(&home);
    node.enroll(&base, &enroll_token(&base).await, "n")
        .await
        .unwrap();
    write_events(&home.join("audit.jsonl"), 1200, "a");
    let client = node.client().unwrap();
    let r = node.upload_spool(&client, 500).await.unwrap();
    assert_eq!((r.events, r.stored, r.batches), (1200, 1200, 3));
    assert_eq!(node.upload_spool(&client, 500).await.unwrap().events, 0);
    // Lose the cursor (a crash before it was written): everything is sent again and
    // nothing is stored twice.
    std::fs::remove_file(home.join("agent/audit.cursor")).unwrap();
    let r = node.upload_spool(&client, 500).await.unwrap();
    assert_eq!((r.events, r.stored), (1200, 0));
    let ids = central_ids(&base).await;
    assert_eq!(ids.len(), 1200);
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 1200);
    server.stop().await;
}

/// Run as a child process by the SIGKILL test: a server that serves until killed.
#[test]
#[ignore = "helper: run by server_killed_during_uploads"]
fn serve_until_killed() {
    let Ok(dir) = std::env::var("WARDEN_TEST_SERVE_DIR") else {
        return;
    };
    let listen = std::env::var("WARDEN_TEST_SERVE_ADDR").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = Config::new(listen.parse().unwrap(), dir.into());
        c.admin_token = Some(ADMIN.into());
        let s = warden_control::start(c).await.unwrap();
        s.wait().await;
    });
}

fn spawn_server(dir: &Path, addr: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "serve_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WARDEN_TEST_SERVE_DIR", dir)
        .env("WARDEN_TEST_SERVE_ADDR", addr)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_healthy(base: &str) {
    let c = Client::new(base, Auth::None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(a) = c.get("/healthz").await
            && a.status.is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_during_uploads_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let base = format!("http://{addr}");
    let data = dir.path().join("server");
    let mut child = spawn_server(&data, &addr);
    wait_healthy(&base).await;
    let home = dir.path().join("n");
    let node = Node::new(&home);
    node.enroll(&base, &enroll_token(&base).await, "n")
        .await
        .unwrap();
    let spool = home.join("audit.jsonl");
    write_events(&spool, 6000, "k");
    let total = 6000;
    // Upload in small batches from a background agent; kill the server as soon as the
    // first batches are acknowledged, several times.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let runner = node.clone();
    let opts = AgentOptions {
        upload_interval: Duration::from_millis(20),
        batch_size: 50,
        ..AgentOptions::default()
    };
    let task = tokio::spawn(async move {
        runner
            .run(opts, async move {
                let _ = rx.await;
            })
            .await
    });
    for round in 0..3 {
        let before = node.status().unwrap().spool_pending_bytes;
        wait_for("some progress", || {
            node.status().unwrap().spool_pending_bytes < before
        })
        .await;
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        child.wait().unwrap();
        if round == 1 {
            // More events while the server is down: the node keeps spooling.
            write_events(&spool, 500, "offline");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        child = spawn_server(&data, &addr);
        wait_healthy(&base).await;
    }
    wait_for("the spool drained", || {
        node.status().unwrap().spool_pending_bytes == 0
    })
    .await;
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    let ids = central_ids(&base).await;
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event stored twice");
    assert_eq!(ids.len(), total + 500, "no event lost");
    let _ = child.kill();
    let _ = child.wait();
}

/// `session_policy`: standalone uses the local file, enrolled uses the central policy
/// narrowed by the local file (a local file asking for more is refused), a running
/// session re-applies its local policy to each new central one (and denies everything
/// when it no longer fits), and a full spool refuses new sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_policy_narrows_central_by_local_and_spool_cap_refuses() {
    use warden_agent::{AgentError, reloaded_session_policy, session_policy_with_cap};
    use warden_policy::{Principal, Request};
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let base = format!("http://{}", server.addr);
    let home = dir.path().join("node");
    let mount = "[[filesystem.mounts]]\nhost = \"/opt/data\"\nmode = \"ro\"\n";
    let central_src = format!("{}{mount}", policy("central", "api.github.com"));
    let local_src = "version = 1\nname = \"local\"\n[network]\n\
        allow = [\"api.github.com\", \"example.com\"]\n\
        [[filesystem.mounts]]\nhost = \"/opt/data/sub\"\nmode = \"rw\"\n";
    let local_path = dir.path().join("local.toml");
    std::fs::write(&local_path, local_src).unwrap();
    let wider_path = dir.path().join("wider.toml");
    std::fs::write(
        &wider_path,
        format!(
            "{}[[filesystem.mounts]]\nhost = \"/etc\"\nmode = \"ro\"\n",
            policy("wider", "api.github.com")
        ),
    )
    .unwrap();
    const CAP: u64 = 1 << 20;
    let allows = |p: &warden_policy::Policy, host: &str| {
        p.decide(&Principal::default(), &Request::Connect { host, port: 443 })
            .allow
    };

    // Not enrolled: no local file -> the caller's preset; a local file -> that file.
    assert!(session_policy_with_cap(&home, None, CAP).unwrap().is_none());
    let p = session_policy_with_cap(&home, Some(&local_path), CAP)
        .unwrap()
        .unwrap();
    assert_eq!(p.name(), "local");

    let node = Node::new(&home);
    node.enroll(&base, &enroll_token(&base).await, "h")
        .await
        .unwrap();
    let e = session_policy_with_cap(&home, None, CAP).unwrap_err();
    assert!(matches!(e, AgentError::NoBundle(_)), "{e}");
    push(&base, &central_src).await;
    node.sync_bundle(&node.client().unwrap()).await.unwrap();

    let central = session_policy_with_cap(&home, None, CAP).unwrap().unwrap();
    assert_eq!(central.name(), "central");
    assert_eq!(central.origin(), "central:central@v1");
    // Narrowed: only what both allow.
    let p = session_policy_with_cap(&home, Some(&local_path), CAP)
        .unwrap()
        .unwrap();
    let (_, local) = p.narrowing().unwrap();
    assert_eq!(p.id(), format!("{}+{}", central.id(), local.id()));
    assert_eq!(p.origin(), "central:central@v1 narrowed by local.toml");
    assert!(allows(&p, "api.github.com"));
    assert!(
        !allows(&p, "example.com"),
        "the central policy does not allow it"
    );
    // A local file asking for a mount the central policy lacks: refused, naming it.
    let e = session_policy_with_cap(&home, Some(&wider_path), CAP).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, AgentError::Policy(_)), "{msg}");
    assert!(
        msg.contains("`/etc`") && msg.contains("central:central@v1"),
        "{msg}"
    );

    // A running session re-applies its local policy to each new central policy.
    let local = local.clone();
    let widened = format!(
        "{}{mount}",
        policy("central", "api.github.com\", \"example.com")
    );
    push(&base, &widened).await;
    node.sync_bundle(&node.client().unwrap()).await.unwrap();
    let r = reloaded_session_policy(&home, Some(&local)).unwrap();
    assert!(r.refusal().is_none());
    assert!(r.id().ends_with(&format!("+{}", local.id())), "{}", r.id());
    assert!(allows(&r, "example.com"));
    // The new central policy drops the mount the local file needs: deny everything.
    push(&base, &policy("central", "api.github.com")).await;
    node.sync_bundle(&node.client().unwrap()).await.unwrap();
    let r = reloaded_session_policy(&home, Some(&local)).unwrap();
    let why = r.refusal().unwrap();
    assert!(why.contains("`/opt/data/sub`"), "{why}");
    assert!(r.id().ends_with("#refused"), "{}", r.id());
    assert!(!allows(&r, "api.github.com"));
    // Without a local file: the central policy itself.
    let r = reloaded_session_policy(&home, None).unwrap();
    assert!(r.narrowing().is_none() && allows(&r, "api.github.com"));

    // Undelivered spool at the cap: refused with the sizes; delivered: allowed again.
    let spool = home.join("audit.jsonl");
    write_events(&spool, 1, "cap");
    let small = std::fs::metadata(&spool).unwrap().len();
    let e = session_policy_with_cap(&home, None, small).unwrap_err();
    assert!(
        matches!(e, AgentError::SpoolFull { pending, .. } if pending == small),
        "{e}"
    );
    assert!(e.to_string().contains("WARDEN_SPOOL_CAP"));
    let report = node
        .upload_spool(&node.client().unwrap(), 500)
        .await
        .unwrap();
    assert_eq!((report.events, report.pending_bytes), (1, 0));
    assert!(session_policy_with_cap(&home, None, small).is_ok());
    server.stop().await;
}

#[test]
fn spool_cap_sizes_parse() {
    use warden_agent::parse_size;
    assert_eq!(parse_size("1048576"), Ok(1 << 20));
    assert_eq!(parse_size("256M"), Ok(256 << 20));
    assert_eq!(parse_size("2g"), Ok(2 << 30));
    assert!(parse_size("0").is_err());
    assert!(parse_size("lots").unwrap_err().contains("WARDEN_SPOOL_CAP"));
}
