//! Integration tests of the control plane against a real server on loopback with the
//! real SQLite store (and PostgreSQL when WARDEN_TEST_PG_URL names a server).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use warden_control::api::{TokenCreated, route_specs};
use warden_control::auth::Access;
use warden_control::client::{Answer, Auth, Client};
use warden_control::proto::{EnrollResponse, SignedBundle, sign_request};
use warden_control::{Config, Running};

const ADMIN: &str = "wdn_test_admin_token_0123456789abcdef";

const POLICY: &str = r#"version = 1
name = "team-default"
[network]
allow = ["api.github.com"]
[[credentials]]
name = "github"
source = "vault:gh-token"
hosts = ["api.github.com"]
env = "GITHUB_TOKEN"
"#;

struct Env {
    _dir: tempfile::TempDir,
    server: Running,
    base: String,
}

async fn start_with(config: impl FnOnce(&mut Config)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("server"));
    c.admin_token = Some(ADMIN.into());
    config(&mut c);
    let server = warden_control::start(c).await.unwrap();
    let base = format!("http://{}", server.addr);
    Env {
        _dir: dir,
        server,
        base,
    }
}

async fn start() -> Env {
    start_with(|_| {}).await
}

fn admin(env: &Env) -> Client {
    Client::new(&env.base, Auth::Bearer(ADMIN.into())).unwrap()
}

async fn token(env: &Env, body: Value) -> TokenCreated {
    admin(env)
        .post_json("/api/v1/tokens", &body)
        .await
        .unwrap()
        .json()
        .unwrap()
}

struct Machine {
    id: String,
    key: SigningKey,
    server_key: String,
}

async fn enroll(env: &Env, labels: Value) -> Machine {
    let t = token(env, json!({"role": "enroll", "labels": labels})).await;
    let key = SigningKey::from_bytes(&rand_seed());
    let pk = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes());
    let r: EnrollResponse = Client::new(&env.base, Auth::None)
        .unwrap()
        .post_json(
            "/api/v1/enroll",
            &json!({"token": t.token, "public_key": pk, "hostname": "test"}),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    Machine {
        id: r.machine_id,
        key,
        server_key: r.server_public_key,
    }
}

fn rand_seed() -> [u8; 32] {
    warden_control::crypto::random_bytes::<32>().unwrap()
}

fn machine_client(env: &Env, m: &Machine) -> Client {
    Client::new(
        &env.base,
        Auth::Machine {
            id: m.id.clone(),
            key: Box::new(m.key.clone()),
        },
    )
    .unwrap()
}

fn event(id: &str, session: &str, surface: &str, action: &str) -> Value {
    json!({
        "time": "2026-11-30T03:00:00.123456Z", "id": id, "session": session,
        "machine": "claimed-by-node", "user": "alice", "surface": surface, "action": action,
        "target": "api.github.com:443", "decision": "deny", "enforced": true,
        "rule": "policy.toml:3", "reason": "not in network.allow", "policy": "team-default@x",
    })
}

async fn push(env: &Env, source: &str, target: &str) -> Answer {
    admin(env)
        .post_json(
            "/api/v1/policies",
            &json!({"source": source, "target": target, "origin": "team.toml"}),
        )
        .await
        .unwrap()
}

/// Status class of an answer as the matrix sees it.
fn denied(a: &Answer) -> bool {
    if a.status.as_u16() == 401 {
        return true;
    }
    a.status.as_u16() == 403
        && String::from_utf8_lossy(&a.body).contains("this needs an admin token")
}

fn concrete(path: &str) -> String {
    path.replace("{name}", "team-default")
        .replace("{version}", "1")
        .replace("{id}", "nope")
        .replace("{session}", "s-1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_covers_every_route() {
    let env = start().await;
    assert_eq!(push(&env, POLICY, "all").await.status.as_u16(), 201);
    let auditor = token(&env, json!({"role": "auditor"})).await;
    let m = enroll(&env, json!({})).await;
    let callers: Vec<(&str, Client)> = vec![
        ("none", Client::new(&env.base, Auth::None).unwrap()),
        (
            "bogus",
            Client::new(&env.base, Auth::Bearer("wdn_not_a_token".into())).unwrap(),
        ),
        (
            "auditor",
            Client::new(&env.base, Auth::Bearer(auditor.token.clone())).unwrap(),
        ),
        ("admin", admin(&env)),
        ("machine", machine_client(&env, &m)),
    ];
    let specs = route_specs();
    assert!(specs.len() >= 25);
    for spec in &specs {
        // Node streams never end; the matrix checks them with a short read below.
        if spec.path == "/api/v1/node/stream" {
            continue;
        }
        for (who, client) in &callers {
            let method = hyper::Method::from_bytes(spec.method.as_bytes()).unwrap();
            let body = if spec.method == "GET" || spec.method == "DELETE" {
                Vec::new()
            } else {
                b"{}".to_vec()
            };
            let a = client
                .send(method, &concrete(spec.path), body, &[])
                .await
                .unwrap();
            let allowed = matches!(
                (spec.access, *who),
                (Access::Public, _)
                    | (Access::Read, "auditor" | "admin")
                    | (Access::Admin, "admin")
                    | (Access::Machine, "machine")
            );
            // An unrouted path is a bare 404; a handler's 404 explains itself in JSON.
            assert!(
                !(a.status.as_u16() == 404 && a.body.is_empty()),
                "{} {} not routed",
                spec.method,
                spec.path
            );
            assert_eq!(
                !denied(&a),
                allowed,
                "{} {} as {who}: got {} {}",
                spec.method,
                spec.path,
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
    }
    // The stream: refused without a machine signature.
    for (who, client) in &callers {
        if *who == "machine" {
            let resp = client.open_stream("/api/v1/node/stream").await.unwrap();
            assert_eq!(resp.status(), 200);
        } else {
            assert!(
                client.open_stream("/api/v1/node/stream").await.is_err(),
                "{who}"
            );
        }
    }
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_exactly_the_routes() {
    let env = start().await;
    let doc: Value = Client::new(&env.base, Auth::None)
        .unwrap()
        .get("/api/v1/openapi.json")
        .await
        .unwrap()
        .json()
        .unwrap();
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = route_specs()
        .iter()
        .map(|s| (s.method.to_string(), s.path.to_string()))
        .collect();
    assert_eq!(documented, routed);
    // And every routed path answers something other than 404/405 for its method.
    let a = admin(&env);
    for (method, path) in &routed {
        if path.ends_with("/stream") {
            continue;
        }
        let r = a
            .send(
                hyper::Method::from_bytes(method.as_bytes()).unwrap(),
                &concrete(path),
                if method == "GET" || method == "DELETE" {
                    vec![]
                } else {
                    b"{}".to_vec()
                },
                &[],
            )
            .await
            .unwrap();
        assert_ne!(r.status.as_u16(), 405, "{method} {path}");
    }
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_tokens_are_one_time_and_expire() {
    let env = start().await;
    let t = token(&env, json!({"role": "enroll", "labels": {"team": "ml"}})).await;
    let anon = Client::new(&env.base, Auth::None).unwrap();
    let pk = |seed: [u8; 32]| {
        base64::engine::general_purpose::STANDARD
            .encode(SigningKey::from_bytes(&seed).verifying_key().as_bytes())
    };
    let first = anon
        .post_json(
            "/api/v1/enroll",
            &json!({"token": t.token, "public_key": pk(rand_seed())}),
        )
        .await
        .unwrap();
    let r: EnrollResponse = first.json().unwrap();
    assert_eq!(r.labels.get("team").map(String::as_str), Some("ml"));
    let again = anon
        .post_json(
            "/api/v1/enroll",
            &json!({"token": t.token, "public_key": pk(rand_seed())}),
        )
        .await
        .unwrap();
    assert_eq!(again.status.as_u16(), 401, "a used token enrolls nobody");

    let short = token(&env, json!({"role": "enroll", "ttl_secs": 1})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = anon
        .post_json(
            "/api/v1/enroll",
            &json!({"token": short.token, "public_key": pk(rand_seed())}),
        )
        .await
        .unwrap();
    assert_eq!(
        expired.status.as_u16(),
        401,
        "an expired token enrolls nobody"
    );

    // Admin and auditor tokens are not enrollment tokens.
    let bad = anon
        .post_json(
            "/api/v1/enroll",
            &json!({"token": ADMIN, "public_key": pk(rand_seed())}),
        )
        .await
        .unwrap();
    assert_eq!(bad.status.as_u16(), 401);
    // And an enrollment token is not an API token.
    let t2 = token(&env, json!({"role": "enroll"})).await;
    let as_api = Client::new(&env.base, Auth::Bearer(t2.token))
        .unwrap()
        .get("/api/v1/machines")
        .await
        .unwrap();
    assert_eq!(as_api.status.as_u16(), 401);
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_requests_reject_replay_skew_and_other_keys() {
    let env = start().await;
    let m = enroll(&env, json!({})).await;
    let raw = |headers: Vec<(&'static str, String)>| {
        let base = env.base.clone();
        async move {
            let mut extra: Vec<(&str, &str)> = Vec::new();
            for (k, v) in &headers {
                extra.push((k, v.as_str()));
            }
            Client::new(&base, Auth::None)
                .unwrap()
                .send(hyper::Method::GET, "/api/v1/node/bundle", vec![], &extra)
                .await
                .unwrap()
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let good = sign_request(
        &m.key,
        &m.id,
        "GET",
        "/api/v1/node/bundle",
        b"",
        now,
        "nonce-0123456789abcdef",
    );
    assert_eq!(raw(good.pairs().to_vec()).await.status.as_u16(), 200);
    assert_eq!(
        raw(good.pairs().to_vec()).await.status.as_u16(),
        401,
        "replay"
    );
    let old = sign_request(
        &m.key,
        &m.id,
        "GET",
        "/api/v1/node/bundle",
        b"",
        now - 600,
        "nonce-old-0123456789ab",
    );
    assert_eq!(raw(old.pairs().to_vec()).await.status.as_u16(), 401, "skew");
    let other = SigningKey::from_bytes(&rand_seed());
    let forged = sign_request(
        &other,
        &m.id,
        "GET",
        "/api/v1/node/bundle",
        b"",
        now,
        "nonce-forged-0123456789",
    );
    assert_eq!(
        raw(forged.pairs().to_vec()).await.status.as_u16(),
        401,
        "wrong key"
    );
    // A signature over another path does not transfer.
    let moved = sign_request(
        &m.key,
        &m.id,
        "GET",
        "/api/v1/node/stream",
        b"",
        now,
        "nonce-moved-0123456789a",
    );
    assert_eq!(
        raw(moved.pairs().to_vec()).await.status.as_u16(),
        401,
        "other path"
    );
    // A revoked machine is refused.
    assert_eq!(
        admin(&env)
            .delete(&format!("/api/v1/machines/{}", m.id))
            .await
            .unwrap()
            .status
            .as_u16(),
        204
    );
    assert_eq!(
        machine_client(&env, &m)
            .get("/api/v1/node/bundle")
            .await
            .unwrap()
            .status
            .as_u16(),
        401
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_validate_version_diff_rollback_and_target() {
    let env = start().await;
    let a = admin(&env);
    // Invalid: the same diagnostics as `policy check`.
    let bad = push(
        &env,
        "version = 1\nname = \"team-default\"\n[network]\nalow = []\n",
        "all",
    )
    .await;
    assert_eq!(bad.status.as_u16(), 422);
    let v: Value = serde_json::from_slice(&bad.body).unwrap();
    let d = &v["diagnostics"][0];
    assert_eq!(d["file"], "team.toml");
    assert_eq!(d["line"], 4);
    assert!(v["rendered"].as_str().unwrap().contains("team.toml:4"));
    assert_eq!(push(&env, POLICY, "everyone").await.status.as_u16(), 400);

    let v1: Value = push(&env, POLICY, "all").await.json().unwrap();
    assert_eq!(v1["version"], 1);
    let changed = POLICY.replace(
        "api.github.com\"]\n[[",
        "api.github.com\", \"pypi.org\"]\n[[",
    );
    let v2: Value = push(&env, &changed, "label:team=ml").await.json().unwrap();
    assert_eq!(v2["version"], 2);
    let history: Vec<Value> = a
        .get("/api/v1/policies/team-default")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(history.len(), 2);
    let diff: Value = a
        .get("/api/v1/policies/team-default/diff?from=1&to=2")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert!(
        diff["diff"]
            .as_str()
            .unwrap()
            .contains("+allow = [\"api.github.com\", \"pypi.org\"]")
    );
    let rb: Value = a
        .post_json(
            "/api/v1/policies/team-default/rollback",
            &json!({"version": 1}),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(rb["version"], 3);
    assert_eq!(rb["target"], "all");
    let v3: Value = a
        .get("/api/v1/policies/team-default/versions/3")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v3["source"], POLICY);

    // Most specific target wins: a machine-targeted policy beats `all`.
    let m = enroll(&env, json!({"team": "ml"})).await;
    let mine = POLICY.replace("team-default", "just-this-one");
    push(&env, &mine, &format!("machine:{}", m.id))
        .await
        .ok()
        .unwrap();
    let b: SignedBundle = machine_client(&env, &m)
        .get("/api/v1/node/bundle")
        .await
        .unwrap()
        .json()
        .unwrap();
    let key = warden_control::proto::decode_public_key(&m.server_key).unwrap();
    let payload = b.verify(&key).unwrap();
    assert_eq!(payload.machine, m.id);
    assert_eq!(payload.policy.unwrap().name, "just-this-one");
    // Another machine still gets the `all` policy.
    let other = enroll(&env, json!({})).await;
    let b: SignedBundle = machine_client(&env, &other)
        .get("/api/v1/node/bundle")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(b.verify(&key).unwrap().policy.unwrap().name, "team-default");
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_carry_etags() {
    let env = start().await;
    push(&env, POLICY, "all").await.ok().unwrap();
    let m = enroll(&env, json!({})).await;
    let c = machine_client(&env, &m);
    let first = c.get("/api/v1/node/bundle").await.unwrap();
    let etag = first.etag.clone().unwrap();
    let again = c
        .send(
            hyper::Method::GET,
            "/api/v1/node/bundle",
            vec![],
            &[("if-none-match", &etag)],
        )
        .await
        .unwrap();
    assert_eq!(again.status.as_u16(), 304);
    push(
        &env,
        &POLICY.replace("api.github.com\"]\n[[", "x.org\"]\n[["),
        "all",
    )
    .await
    .ok()
    .unwrap();
    let changed = c
        .send(
            hyper::Method::GET,
            "/api/v1/node/bundle",
            vec![],
            &[("if-none-match", &etag)],
        )
        .await
        .unwrap();
    assert_eq!(changed.status.as_u16(), 200);
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_upload_is_idempotent_and_stamped_with_the_signer() {
    let env = start().await;
    let m = enroll(&env, json!({})).await;
    let c = machine_client(&env, &m);
    let batch = json!({"events": [
        event("e-1", "s-1", "session", "start"),
        event("e-2", "s-1", "network", "connect"),
        event("e-3", "s-1", "network", "connect"),
    ]});
    let ack: Value = c
        .post_json("/api/v1/node/audit", &batch)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        (ack["received"].as_u64(), ack["stored"].as_u64()),
        (Some(3), Some(3))
    );
    let ack: Value = c
        .post_json("/api/v1/node/audit", &batch)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        (ack["received"].as_u64(), ack["stored"].as_u64()),
        (Some(3), Some(0))
    );
    let a = admin(&env);
    let all: Vec<Value> = a
        .get("/api/v1/audit?limit=100")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(all.len(), 3);
    assert!(
        all.iter().all(|e| e["machine"] == m.id.as_str()),
        "machine comes from the signature"
    );
    let denies: Vec<Value> = a
        .get("/api/v1/audit?surface=network&decision=deny&session=s-1")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(denies.len(), 2);
    let export = a
        .get("/api/v1/audit/export?machine=".to_string().as_str())
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&export.body).lines().count(), 3);
    assert_eq!(
        a.get("/api/v1/audit?surface=bogus")
            .await
            .unwrap()
            .status
            .as_u16(),
        400
    );
    // The session record came from the start event.
    let sessions: Vec<Value> = a.get("/api/v1/sessions").await.unwrap().json().unwrap();
    assert_eq!(sessions[0]["id"], "s-1");
    assert_eq!(sessions[0]["running"], true);
    // A garbled event rejects the batch; nothing of it is stored.
    let bad = c
        .post_json(
            "/api/v1/node/audit",
            &json!({"events": [event("e-9", "s", "network", "x"), {"id": "z"}]}),
        )
        .await
        .unwrap();
    assert_eq!(bad.status.as_u16(), 400);
    let all: Vec<Value> = a
        .get("/api/v1/audit?limit=100")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(all.len(), 3);
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_values_never_leave_except_as_a_bound_lease() {
    let env = start().await;
    let a = admin(&env);
    let secret = "ghp_very_secret_value_42";
    assert_eq!(
        a.put_json("/api/v1/secrets/gh-token", &json!({"value": secret}))
            .await
            .unwrap()
            .status
            .as_u16(),
        204
    );
    a.put_json("/api/v1/secrets/unbound", &json!({"value": "other"}))
        .await
        .unwrap()
        .ok()
        .unwrap();
    // Not in any listing, not on disk in clear.
    let list = a.get("/api/v1/secrets").await.unwrap();
    assert!(!String::from_utf8_lossy(&list.body).contains(secret));
    let db = std::fs::read(env._dir.path().join("server/warden.db")).unwrap_or_default();
    let wal = std::fs::read(env._dir.path().join("server/warden.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    let m = enroll(&env, json!({})).await;
    let c = machine_client(&env, &m);
    // No policy binds it yet.
    let r = c
        .post_json(
            "/api/v1/node/leases",
            &json!({"session": "s-1", "name": "gh-token"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 403);
    push(&env, POLICY, "all").await.ok().unwrap();
    let r: Value = c
        .post_json(
            "/api/v1/node/leases",
            &json!({"session": "s-1", "name": "gh-token"}),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r["value"], secret);
    let r = c
        .post_json(
            "/api/v1/node/leases",
            &json!({"session": "s-1", "name": "unbound"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 403, "only credentials the policy binds");
    // Session end revokes; a new lease for the ended session is refused.
    c.delete("/api/v1/node/leases/s-1")
        .await
        .unwrap()
        .ok()
        .unwrap();
    let r = c
        .post_json(
            "/api/v1/node/leases",
            &json!({"session": "s-1", "name": "gh-token"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 409);
    // Another machine cannot end this machine's session or see its records.
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_prints_one_admin_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("s"));
    let s = warden_control::start(c.clone()).await.unwrap();
    let token = s.created_admin_token.clone().unwrap();
    let base = format!("http://{}", s.addr);
    let r = Client::new(&base, Auth::Bearer(token.clone()))
        .unwrap()
        .get("/api/v1/machines")
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 200);
    s.stop().await;
    let s = warden_control::start(c).await.unwrap();
    assert!(s.created_admin_token.is_none(), "printed once only");
    let base = format!("http://{}", s.addr);
    let r = Client::new(&base, Auth::Bearer(token))
        .unwrap()
        .get("/metrics")
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&r.body).contains("warden_machines_connected"));
    s.stop().await;
}

/// Two replicas on one PostgreSQL database: a push through one reaches a node
/// streaming from the other (LISTEN/NOTIFY), and both see the same state. Runs when
/// WARDEN_TEST_PG_URL names a server (scripts/test starts one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_replicas_fan_out() {
    use http_body_util::BodyExt;
    let Ok(url) = std::env::var("WARDEN_TEST_PG_URL") else {
        eprintln!("skipping: WARDEN_TEST_PG_URL is not set");
        return;
    };
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let db = format!(
        "wt_{}",
        hex::encode(warden_control::crypto::random_bytes::<6>().unwrap())
    );
    let admin_pool = sqlx::AnyPool::connect(&url).await.unwrap();
    admin_pool
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .await
        .unwrap();
    let (prefix, _) = url.rsplit_once('/').unwrap();
    let db_url = format!("{prefix}/{db}");
    let master = hex::encode([5u8; 32]);
    let mk = |db_url: String, master: String| {
        move |c: &mut Config| {
            c.database = Some(db_url);
            c.master_key = Some(master);
            // Only LISTEN/NOTIFY can make the second replica notice in time.
            c.serial_poll = Duration::from_secs(3600);
        }
    };
    let (a, b) = tokio::join!(
        start_with(mk(db_url.clone(), master.clone())),
        start_with(mk(db_url.clone(), master.clone()))
    );
    let m = enroll(&a, json!({"team": "ml"})).await;
    // Same signing key on both replicas: the bundle from B verifies with the key from A.
    let c_b = machine_client(&b, &m);
    let resp = c_b.open_stream("/api/v1/node/stream").await.unwrap();
    let mut body = resp.into_body();
    let mut parser = warden_control::client::SseParser::default();
    let mut serials = Vec::new();
    let wait_serial = |serials: &Vec<i64>, min: i64| serials.iter().any(|s| *s >= min);
    // The initial notice.
    while serials.is_empty() {
        let frame = tokio::time::timeout(Duration::from_secs(60), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Ok(d) = frame.into_data() {
            for (_, data) in parser.feed(&d) {
                serials.push(
                    serde_json::from_str::<Value>(&data).unwrap()["serial"]
                        .as_i64()
                        .unwrap(),
                );
            }
        }
    }
    assert_eq!(push(&a, POLICY, "label:team=ml").await.status.as_u16(), 201);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !wait_serial(&serials, 1) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("replica B never announced the push made on replica A")
            .unwrap()
            .unwrap();
        if let Ok(d) = frame.into_data() {
            for (_, data) in parser.feed(&d) {
                serials.push(
                    serde_json::from_str::<Value>(&data).unwrap()["serial"]
                        .as_i64()
                        .unwrap(),
                );
            }
        }
    }
    let bundle: SignedBundle = c_b
        .get("/api/v1/node/bundle")
        .await
        .unwrap()
        .json()
        .unwrap();
    let key = warden_control::proto::decode_public_key(&m.server_key).unwrap();
    assert_eq!(
        bundle.verify(&key).unwrap().policy.unwrap().name,
        "team-default"
    );
    // Audit through B is visible through A, exactly once.
    let batch = json!({"events": [event("pg-1", "s", "network", "connect")]});
    c_b.post_json("/api/v1/node/audit", &batch)
        .await
        .unwrap()
        .ok()
        .unwrap();
    machine_client(&a, &m)
        .post_json("/api/v1/node/audit", &batch)
        .await
        .unwrap()
        .ok()
        .unwrap();
    let all: Vec<Value> = admin(&a)
        .get("/api/v1/audit")
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(all.len(), 1);
    a.server.stop().await;
    b.server.stop().await;
}

// ---- console over HTTP: a cookie jar and the CSRF tokens of the rendered forms ------

/// A minimal browser: keeps cookies, sends forms, follows no redirects.
struct Browser {
    client: Client,
    cookies: std::collections::BTreeMap<String, String>,
}

fn form_body(fields: &[(&str, &str)]) -> Vec<u8> {
    fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                warden_control::client::encode_component(k),
                warden_control::client::encode_component(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

/// The value of the first `name="csrf"` hidden field of a page.
fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = html.find(marker).expect("page has a CSRF field") + marker.len();
    html[at..].split('"').next().unwrap().to_string()
}

impl Browser {
    fn new(env: &Env) -> Browser {
        Browser {
            client: Client::new(&env.base, Auth::None).unwrap(),
            cookies: Default::default(),
        }
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        origin: Option<&str>,
    ) -> Answer {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut extra = vec![("content-type", "application/x-www-form-urlencoded")];
        if !cookie.is_empty() {
            extra.push(("cookie", cookie.as_str()));
        }
        if let Some(o) = origin {
            extra.push(("origin", o));
        }
        let a = self
            .client
            .send(
                hyper::Method::from_bytes(method.as_bytes()).unwrap(),
                path,
                body,
                &extra,
            )
            .await
            .unwrap();
        for v in a.headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (kv, attrs) = v.split_once(';').unwrap_or((v, ""));
            assert!(
                attrs.contains("HttpOnly") && attrs.contains("SameSite=Strict"),
                "{v}"
            );
            let (k, val) = kv.split_once('=').unwrap();
            if val.is_empty() || attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), val.to_string());
            }
        }
        a
    }

    async fn get(&mut self, path: &str) -> (u16, String) {
        let a = self.send("GET", path, Vec::new(), None).await;
        (
            a.status.as_u16(),
            String::from_utf8_lossy(&a.body).into_owned(),
        )
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        self.send("POST", path, form_body(fields), None).await
    }

    async fn login(&mut self, token: &str) {
        let (_, html) = self.get("/login").await;
        let csrf = csrf_of(&html);
        let a = self
            .post("/login", &[("csrf", &csrf), ("token", token)])
            .await;
        assert_eq!(
            a.status.as_u16(),
            303,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        assert!(self.cookies.contains_key(warden_control::console::COOKIE));
    }

    /// The session's CSRF token, read from a page's forms.
    async fn csrf(&mut self) -> String {
        let (status, html) = self.get("/").await;
        assert_eq!(status, 200, "{html}");
        csrf_of(&html)
    }
}

fn location(a: &Answer) -> String {
    a.headers
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_authorization_matrix_covers_every_route() {
    use warden_control::console::console_route_specs;
    let env = start().await;
    assert_eq!(push(&env, POLICY, "all").await.status.as_u16(), 201);
    let auditor = token(&env, json!({"role": "auditor"})).await;
    let mut nobody = Browser::new(&env);
    let mut aud = Browser::new(&env);
    aud.login(&auditor.token).await;
    let aud_csrf = aud.csrf().await;
    let mut adm = Browser::new(&env);
    adm.login(ADMIN).await;
    let adm_csrf = adm.csrf().await;
    let specs = console_route_specs();
    assert!(specs.len() >= 20);
    for spec in &specs {
        let path = concrete(spec.path);
        if spec.path == "/login" || spec.path == "/logout" {
            continue; // checked below: they change the session itself
        }
        let post = spec.method == "POST";
        // Nobody: pages redirect to the login form, forms are refused.
        let a = nobody
            .send(spec.method, &path, form_body(&[("csrf", "x")]), None)
            .await;
        match (spec.access, post) {
            (Access::Public, _) => assert_eq!(a.status.as_u16(), 200, "{path}"),
            (_, false) => {
                assert_eq!(
                    (a.status.as_u16(), location(&a).as_str()),
                    (303, "/login"),
                    "{path}"
                )
            }
            (_, true) => assert_eq!(a.status.as_u16(), 403, "{path}"),
        }
        if spec.access == Access::Public {
            continue;
        }
        // The auditor: read pages yes, admin pages and forms no.
        let a = aud
            .send(spec.method, &path, form_body(&[("csrf", &aud_csrf)]), None)
            .await;
        let refused = a.status.as_u16() == 403
            && String::from_utf8_lossy(&a.body).contains("needs an admin token");
        assert_eq!(
            refused,
            spec.access == Access::Admin,
            "{} {path} as auditor: {}",
            spec.method,
            a.status
        );
        if !post {
            continue;
        }
        // The admin: refused without the CSRF token, with a wrong one, or cross-origin.
        for (csrf, origin) in [
            ("", None),
            ("0000", None),
            (adm_csrf.as_str(), Some("http://evil.example")),
        ] {
            let a = adm
                .send("POST", &path, form_body(&[("csrf", csrf)]), origin)
                .await;
            assert_eq!(
                a.status.as_u16(),
                403,
                "{path} csrf={csrf:?} origin={origin:?}"
            );
        }
    }
    // Login needs the login form's double-submit cookie.
    let mut fresh = Browser::new(&env);
    let a = fresh
        .post("/login", &[("csrf", "forged"), ("token", ADMIN)])
        .await;
    assert_eq!(a.status.as_u16(), 403);
    let (_, html) = fresh.get("/login").await;
    let a = fresh
        .post(
            "/login",
            &[("csrf", &csrf_of(&html)), ("token", "wdn_wrong")],
        )
        .await;
    assert_eq!(a.status.as_u16(), 401);
    // Logout ends the session on the server, not only in the browser.
    let stolen = adm.cookies.clone();
    let a = adm.post("/logout", &[("csrf", &adm_csrf)]).await;
    assert_eq!((a.status.as_u16(), location(&a).as_str()), (303, "/login"));
    adm.cookies = stolen;
    assert_eq!(adm.get("/").await.0, 303);
    // Revoking the token ends the auditor's session.
    assert_eq!(
        admin(&env)
            .delete(&format!("/api/v1/tokens/{}", auditor.id))
            .await
            .unwrap()
            .status
            .as_u16(),
        204
    );
    assert_eq!(aud.get("/").await.0, 303);
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_flow_edit_publish_machine_audit_secrets_tokens() {
    let env = start().await;
    let mut b = Browser::new(&env);
    assert_eq!(b.get("/").await.0, 303);
    b.login(ADMIN).await;
    let csrf = b.csrf().await;
    // An invalid policy: the same diagnostics as `policy check`, nothing published.
    let broken = "version = 1\nname = \"console-test\"\n[network]\nallow = 3\n";
    let a = b
        .post(
            "/policies/edit",
            &[
                ("csrf", &csrf),
                ("source", broken),
                ("target", "all"),
                ("action", "publish"),
            ],
        )
        .await;
    let html = String::from_utf8_lossy(&a.body).into_owned();
    assert_eq!(a.status.as_u16(), 422, "{html}");
    assert!(
        html.contains("id=\"diagnostics\"") && html.contains("policy.toml:4"),
        "{html}"
    );
    assert!(html.contains("allow = 3"), "the editor keeps the text");
    assert!(
        admin(&env)
            .get("/api/v1/policies/console-test")
            .await
            .unwrap()
            .status
            .as_u16()
            == 404
    );
    // Fixed: validate, then publish.
    let fixed = "version = 1\nname = \"console-test\"\n[network]\nallow = [\"api.github.com\"]\n";
    let a = b
        .post(
            "/policies/edit",
            &[
                ("csrf", &csrf),
                ("source", fixed),
                ("target", "all"),
                ("action", "validate"),
            ],
        )
        .await;
    assert!(String::from_utf8_lossy(&a.body).contains("Valid: console-test"));
    let a = b
        .post(
            "/policies/edit",
            &[
                ("csrf", &csrf),
                ("source", fixed),
                ("target", "all"),
                ("action", "publish"),
            ],
        )
        .await;
    assert_eq!(location(&a), "/policies/console-test?published=1");
    let (_, html) = b.get("/policies/console-test?published=1").await;
    assert!(html.contains("Published console-test v1"), "{html}");
    // A second version, a diff, a rollback.
    let v2 = fixed.replace("api.github.com", "pypi.org");
    b.post(
        "/policies/edit",
        &[
            ("csrf", &csrf),
            ("source", &v2),
            ("target", "all"),
            ("action", "publish"),
        ],
    )
    .await;
    let (_, html) = b.get("/policies/console-test?from=1&to=2").await;
    assert!(
        html.contains("-allow = [&quot;api.github.com&quot;]"),
        "{html}"
    );
    let a = b
        .post(
            "/policies/console-test/rollback",
            &[("csrf", &csrf), ("version", "1")],
        )
        .await;
    assert_eq!(location(&a), "/policies/console-test?rolled_back=3");
    // A machine picks it up and reports; the console shows both.
    let m = enroll(&env, json!({"team": "ml"})).await;
    let mc = machine_client(&env, &m);
    mc.get("/api/v1/node/bundle").await.unwrap().ok().unwrap();
    warden_control::server::flush_seen(&env.server.app).await;
    let (_, html) = b.get("/machines").await;
    assert!(
        html.contains(&m.id) && html.contains("console-test@v3"),
        "{html}"
    );
    let mut ev = event("e-console", "s-console", "network", "connect");
    ev["target"] = json!("pypi.org:443");
    mc.post_json(
        "/api/v1/node/audit",
        &json!({"events": [ev, event("e-start", "s-console", "session", "start")]}),
    )
    .await
    .unwrap()
    .ok()
    .unwrap();
    let (status, html) = b.get("/audit?target=pypi.org%3A443&decision=deny").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("e-console") || html.contains("s-console"),
        "{html}"
    );
    assert!(html.contains("pypi.org:443"));
    let (_, html) = b.get("/audit?decision=maybe").await;
    assert!(html.contains("expected allow or deny"));
    let (_, html) = b.get("/sessions").await;
    assert!(html.contains("s-console"));
    // Secrets: the name shows, the value never.
    let a = b
        .post(
            "/secrets",
            &[
                ("csrf", &csrf),
                ("name", "gh-token"),
                ("value", "ghp_console_secret_value"),
            ],
        )
        .await;
    let html = String::from_utf8_lossy(&a.body).into_owned();
    assert!(html.contains("vault:gh-token") && !html.contains("ghp_console_secret_value"));
    // Tokens: the value is shown once, in the answer that created it.
    let a = b
        .post(
            "/tokens",
            &[
                ("csrf", &csrf),
                ("role", "enroll"),
                ("labels", "team=ml"),
                ("ttl_hours", "1"),
            ],
        )
        .await;
    let html = String::from_utf8_lossy(&a.body).into_owned();
    let at = html.find("id=\"new-token\">").unwrap() + "id=\"new-token\">".len();
    let value = html[at..].split('<').next().unwrap().to_string();
    assert!(value.starts_with("wdn_"));
    let (_, html) = b.get("/tokens").await;
    assert!(!html.contains(&value));
    // Every console answer carries the security headers.
    let a = b.send("GET", "/", Vec::new(), None).await;
    let csp = a
        .headers
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_server_with_a_pinned_ca_and_secure_cookies() {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let env = start_with(|c| {
        c.tls = Some(warden_control::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        })
    })
    .await;
    let https = env.base.replace("http://", "https://");
    let c = Client::with_ca(&https, Auth::Bearer(ADMIN.into()), Some(&cert)).unwrap();
    let a = c.get("/api/v1/machines").await.unwrap();
    assert_eq!(a.status.as_u16(), 200);
    // The login form's cookie is Secure over TLS.
    let a = c.get("/login").await.unwrap();
    let cookie = a.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(cookie.contains("Secure"), "{cookie}");
    // Without the CA the certificate is refused; plain HTTP gets no answer.
    let untrusted = Client::with_ca(&https, Auth::None, None).unwrap();
    let e = untrusted.get("/healthz").await.unwrap_err().to_string();
    assert!(
        e.contains("certificate") || e.contains("cannot reach"),
        "{e}"
    );
    assert!(
        Client::new(&env.base, Auth::None)
            .unwrap()
            .get("/healthz")
            .await
            .is_err()
    );
    // A missing key file stops the start with its name.
    let mut bad = Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("s2"));
    bad.tls = Some(warden_control::TlsFiles {
        cert: cert.clone(),
        key: dir.path().join("missing-key.pem"),
    });
    let e = warden_control::start(bad).await.unwrap_err().to_string();
    assert!(e.contains("missing-key.pem"), "{e}");
    env.server.stop().await;
}

/// The ids of every stored audit event, sorted.
async fn stored_ids(env: &Env) -> Vec<String> {
    let all: Vec<Value> = admin(env)
        .get("/api/v1/audit?limit=1000")
        .await
        .unwrap()
        .json()
        .unwrap();
    let mut ids: Vec<String> = all
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_retention_deletes_older_events_and_keeps_newer_ones() {
    const DAY_MS: i64 = 86_400_000;
    let env = start_with(|c| {
        c.audit_retention_days = 30;
        c.retention_interval = Duration::from_millis(100);
    })
    .await;
    let m = enroll(&env, json!({})).await;
    let now = warden_control::store::now_ms();
    let at = |id: &str, ms: i64| {
        let mut e = event(id, "s-r", "network", "connect");
        e["time"] = json!(warden_control::store::fmt_ms(ms));
        e
    };
    let batch = json!({"events": [
        at("old-40d", now - 40 * DAY_MS),
        at("mid-10d", now - 10 * DAY_MS),
        at("new-1h", now - 3_600_000),
    ]});
    machine_client(&env, &m)
        .post_json("/api/v1/node/audit", &batch)
        .await
        .unwrap()
        .ok()
        .unwrap();
    // The server's own retention task (every 100 ms here) removes the 40-day-old event
    // and keeps the ones inside the 30 days.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ids = stored_ids(&env).await;
        if !ids.contains(&"old-40d".to_string()) {
            assert_eq!(ids, ["mid-10d", "new-1h"]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention never ran: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 25 days later, the 10-day-old event is past the retention and the newest is not.
    let removed = warden_control::server::apply_retention(&env.server.app, now + 25 * DAY_MS)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(stored_ids(&env).await, ["new-1h"]);
}

/// The next `bundle` notice on a node stream; `None` when the stream ended.
async fn next_notice(
    body: &mut hyper::body::Incoming,
    parser: &mut warden_control::client::SseParser,
) -> Option<warden_control::proto::StreamNotice> {
    use http_body_util::BodyExt;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("no notice within 30 s");
        let data = match frame {
            None | Some(Err(_)) => return None,
            Some(Ok(f)) => f.into_data().unwrap_or_default(),
        };
        if let Some((_, d)) = parser.feed(&data).into_iter().find(|(n, _)| n == "bundle") {
            return Some(serde_json::from_str(&d).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_notices_carry_the_signed_bundle_and_stop_at_revocation() {
    let env = start().await;
    push(&env, POLICY, "all").await.ok().unwrap();
    let m = enroll(&env, json!({})).await;
    let pinned = warden_control::proto::decode_public_key(&m.server_key).unwrap();
    let c = machine_client(&env, &m);
    let mut body = c
        .open_stream("/api/v1/node/stream")
        .await
        .unwrap()
        .into_body();
    let mut parser = warden_control::client::SseParser::default();
    // The first notice, as the stream opens, carries the bundle in force and its ETag.
    let first = next_notice(&mut body, &mut parser).await.unwrap();
    let payload = first.bundle.as_ref().unwrap().verify(&pinned).unwrap();
    assert_eq!(payload.machine, m.id);
    assert_eq!(payload.policy.unwrap().version, 1);
    let fetched = c.get("/api/v1/node/bundle").await.unwrap();
    assert_eq!(first.etag, fetched.etag, "same ETag as a fetch");
    // A push: the notice carries the new bundle, signed for this machine.
    push(
        &env,
        &POLICY.replace("api.github.com\"]", "x.org\"]"),
        "all",
    )
    .await
    .ok()
    .unwrap();
    let second = next_notice(&mut body, &mut parser).await.unwrap();
    let payload = second.bundle.as_ref().unwrap().verify(&pinned).unwrap();
    assert_eq!(payload.machine, m.id);
    assert!(payload.serial > first.serial);
    let policy = payload.policy.unwrap();
    assert_eq!(policy.version, 2);
    assert!(policy.source.contains("x.org"));
    assert_ne!(second.etag, first.etag);
    // A tampered bundle from the stream does not verify.
    let mut tampered = second.bundle.clone().unwrap();
    tampered.payload = base64::engine::general_purpose::STANDARD.encode(
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(&tampered.payload)
                .unwrap(),
        )
        .unwrap()
        .replace("x.org", "y.org"),
    );
    assert!(tampered.verify(&pinned).is_err());
    // Revoked: the next push sends it nothing and its stream ends.
    assert_eq!(
        admin(&env)
            .delete(&format!("/api/v1/machines/{}", m.id))
            .await
            .unwrap()
            .status
            .as_u16(),
        204
    );
    push(&env, POLICY, "all").await.ok().unwrap();
    assert!(next_notice(&mut body, &mut parser).await.is_none());
    env.server.stop().await;
}
