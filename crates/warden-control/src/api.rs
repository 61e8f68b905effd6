//! The HTTP API under `/api/v1/`, `/healthz` and `/metrics`. [`routes`] is the single
//! list of routes: the router, the OpenAPI document and the authorization tests are
//! all built from it, so none of them can drift from the others.

use crate::auth::{Access, Caller, MachineCaller, enforce};
use crate::crypto::{hash_token, new_token, random_id};
use crate::error::ControlError;
use crate::proto::{
    AuditAck, AuditBatch, BundlePayload, BundlePolicy, EnrollRequest, EnrollResponse, LeaseRequest,
    LeaseResponse, SignedBundle, StreamNotice,
};
use crate::server::{ActiveSet, App, NOTIFY_CHANNEL};
use crate::store::{
    AuditQuery, AuditRow, MachineRow, PolicyRow, SessionRow, TokenRow, fmt_ms, now_ms,
};
use crate::validate::{Target, validate, vault_bindings};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One route: what it is, who may call it.
#[derive(Debug, Clone, Serialize)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
}

/// An error answer: a status and a JSON body `{"error": …}` (plus details).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Safe to show to the caller: never a secret, token or key.
    pub message: String,
    /// More fields of the JSON body (e.g. a policy's diagnostics).
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.details.unwrap_or_default();
        body.insert("error".into(), serde_json::Value::String(self.message));
        (self.status, Json(serde_json::Value::Object(body))).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        tracing::error!("request failed: {e}");
        fail(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

fn fail(status: StatusCode, message: &str) -> ApiError {
    ApiError {
        status,
        message: message.to_string(),
        details: None,
    }
}

type ApiResult<T> = Result<T, ApiError>;

macro_rules! route {
    ($m:literal, $p:literal, $a:expr, $s:literal, $h:expr) => {
        (
            RouteSpec {
                method: $m,
                path: $p,
                access: $a,
                summary: $s,
            },
            $h,
        )
    };
}

/// Every route of the API, with its handler.
pub fn routes() -> Vec<(RouteSpec, MethodRouter<App>)> {
    use Access::*;
    vec![
        route!(
            "GET",
            "/healthz",
            Public,
            "Liveness: the server and its database answer.",
            get(healthz)
        ),
        route!("GET", "/metrics", Read, "Prometheus metrics.", get(metrics)),
        route!(
            "GET",
            "/api/v1/openapi.json",
            Public,
            "This API's OpenAPI document.",
            get(openapi)
        ),
        route!(
            "POST",
            "/api/v1/enroll",
            Public,
            "Enroll a machine with a one-time enrollment token.",
            post(enroll)
        ),
        route!(
            "GET",
            "/api/v1/policies",
            Read,
            "The latest version of every policy.",
            get(list_policies)
        ),
        route!(
            "POST",
            "/api/v1/policies",
            Admin,
            "Validate and publish a new policy version.",
            post(push_policy)
        ),
        route!(
            "POST",
            "/api/v1/policies/validate",
            Admin,
            "Validate a policy without publishing it.",
            post(validate_policy)
        ),
        route!(
            "GET",
            "/api/v1/policies/{name}",
            Read,
            "A policy's history, newest first.",
            get(policy_history)
        ),
        route!(
            "GET",
            "/api/v1/policies/{name}/versions/{version}",
            Read,
            "One version of a policy, with its source.",
            get(policy_version)
        ),
        route!(
            "GET",
            "/api/v1/policies/{name}/diff",
            Read,
            "Unified diff between two versions (?from=&to=).",
            get(policy_diff)
        ),
        route!(
            "POST",
            "/api/v1/policies/{name}/rollback",
            Admin,
            "Publish an earlier version again as the newest.",
            post(rollback_policy)
        ),
        route!(
            "GET",
            "/api/v1/machines",
            Read,
            "Enrolled machines.",
            get(list_machines)
        ),
        route!(
            "GET",
            "/api/v1/machines/{id}",
            Read,
            "One machine.",
            get(get_machine)
        ),
        route!(
            "DELETE",
            "/api/v1/machines/{id}",
            Admin,
            "Revoke a machine: its requests are refused from now on.",
            delete(revoke_machine)
        ),
        route!(
            "GET",
            "/api/v1/sessions",
            Read,
            "Sessions, newest first.",
            get(list_sessions)
        ),
        route!(
            "GET",
            "/api/v1/audit",
            Read,
            "Search audit events (JSON).",
            get(audit_query)
        ),
        route!(
            "GET",
            "/api/v1/audit/export",
            Read,
            "Export audit events as JSON lines, oldest first.",
            get(audit_export)
        ),
        route!(
            "GET",
            "/api/v1/secrets",
            Read,
            "Secret names (never values).",
            get(list_secrets)
        ),
        route!(
            "PUT",
            "/api/v1/secrets/{name}",
            Admin,
            "Set a secret's value.",
            put(set_secret)
        ),
        route!(
            "DELETE",
            "/api/v1/secrets/{name}",
            Admin,
            "Delete a secret.",
            delete(delete_secret)
        ),
        route!(
            "GET",
            "/api/v1/tokens",
            Admin,
            "API and enrollment tokens (never their values).",
            get(list_tokens)
        ),
        route!(
            "POST",
            "/api/v1/tokens",
            Admin,
            "Create a token; its value is shown only in this answer.",
            post(create_token)
        ),
        route!(
            "DELETE",
            "/api/v1/tokens/{id}",
            Admin,
            "Revoke a token.",
            delete(delete_token)
        ),
        route!(
            "GET",
            "/api/v1/node/bundle",
            Machine,
            "This machine's signed policy bundle (ETag / If-None-Match).",
            get(node_bundle)
        ),
        route!(
            "GET",
            "/api/v1/node/stream",
            Machine,
            "Server-sent events: `bundle` whenever the policy serial changes.",
            get(node_stream)
        ),
        route!(
            "POST",
            "/api/v1/node/audit",
            Machine,
            "Upload a batch of spooled audit events (idempotent by event id).",
            post(node_audit)
        ),
        route!(
            "POST",
            "/api/v1/node/leases",
            Machine,
            "Lease a vault:NAME credential the machine's policy binds, for one session.",
            post(node_lease)
        ),
        route!(
            "DELETE",
            "/api/v1/node/leases/{session}",
            Machine,
            "End a session: revoke its leases.",
            delete(node_end_session)
        ),
    ]
}

/// The route list without handlers.
pub fn route_specs() -> Vec<RouteSpec> {
    routes().into_iter().map(|(s, _)| s).collect()
}

/// The whole application: API, console, and the layers every response goes through.
pub fn router(app: App) -> Router {
    let mut r: Router<App> = Router::new();
    for (spec, handler) in routes() {
        let access = spec.access;
        let layered = handler.route_layer(from_fn_with_state(
            app.clone(),
            move |s: State<App>, req: Request, next: Next| enforce(s, access, req, next),
        ));
        r = r.route(spec.path, layered);
    }
    r = crate::console::routes(r, app.clone());
    r.layer(from_fn_with_state(app.clone(), common_layer))
        .with_state(app)
}

/// Counting, and the security headers on every response.
async fn common_layer(State(app): State<App>, req: Request, next: Next) -> Response {
    app.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let mut resp = next.run(req).await;
    let status = resp.status();
    if status.is_client_error() {
        app.metrics.responses_4xx.fetch_add(1, Ordering::Relaxed);
    } else if status.is_server_error() {
        app.metrics.responses_5xx.fetch_add(1, Ordering::Relaxed);
    }
    let h = resp.headers_mut();
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        // Not `no-referrer`: browsers then send `Origin: null` on form posts, which the
        // console's same-origin check must refuse.
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        if !h.contains_key(k) {
            h.insert(k, HeaderValue::from_static(v));
        }
    }
    resp
}

// ---- public -------------------------------------------------------------------------

async fn healthz(State(app): State<App>) -> Response {
    match app.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response(),
    }
}

async fn metrics(State(app): State<App>) -> ApiResult<Response> {
    let enrolled = app.store.count_machines().await?;
    let serial = app.serial.borrow().value;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(enrolled, serial),
    )
        .into_response())
}

async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

async fn enroll(State(app): State<App>, Json(req): Json<EnrollRequest>) -> ApiResult<Response> {
    if crate::proto::decode_public_key(&req.public_key).is_err() {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "public_key must be a base64 ed25519 public key",
        ));
    }
    let id = random_id("m-")?;
    let Some(token) = app
        .store
        .consume_enroll_token(&hash_token(&req.token), &id, now_ms())
        .await?
    else {
        return Err(fail(
            StatusCode::UNAUTHORIZED,
            "enrollment token is invalid, expired or already used; ask an admin for a new one \
             (warden token create --enroll)",
        ));
    };
    let hostname: String = req.hostname.chars().take(255).collect();
    app.store
        .insert_machine(&MachineRow {
            id: id.clone(),
            public_key: req.public_key.trim().to_string(),
            hostname,
            labels: token.labels.clone(),
            enrolled_at: now_ms(),
            last_seen: Some(now_ms()),
            policy_held: None,
            revoked: false,
        })
        .await?;
    app.metrics.enrollments.fetch_add(1, Ordering::Relaxed);
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            machine_id: id,
            server_public_key: app.public_key.clone(),
            labels: token.labels,
        }),
    )
        .into_response())
}

// ---- policies -----------------------------------------------------------------------

/// A policy version without its source.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicySummary {
    pub name: String,
    pub version: i64,
    pub id: String,
    pub target: String,
    pub seq: i64,
    pub created_by: String,
    pub created_at: String,
    pub note: String,
}

impl From<&PolicyRow> for PolicySummary {
    fn from(p: &PolicyRow) -> Self {
        PolicySummary {
            name: p.name.clone(),
            version: p.version,
            id: p.policy_id.clone(),
            target: p.target.clone(),
            seq: p.seq,
            created_by: p.created_by.clone(),
            created_at: fmt_ms(p.created_at),
            note: p.note.clone(),
        }
    }
}

async fn list_policies(State(app): State<App>) -> ApiResult<Json<Vec<PolicySummary>>> {
    let rows = app.store.active_policies().await?;
    Ok(Json(rows.iter().map(PolicySummary::from).collect()))
}

/// `POST /api/v1/policies`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PushRequest {
    pub source: String,
    /// `all` (default), `label:K=V` or `machine:ID`.
    #[serde(default)]
    pub target: Option<String>,
    /// File name used in diagnostics (default `policy.toml`).
    #[serde(default)]
    pub origin: Option<String>,
}

fn invalid_response(inv: &crate::validate::Invalid) -> ApiError {
    let mut details = serde_json::Map::new();
    details.insert("diagnostics".into(), serde_json::json!(inv.diagnostics));
    details.insert("rendered".into(), serde_json::json!(inv.rendered));
    ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message: "policy is invalid".into(),
        details: Some(details),
    }
}

/// Validate and store a new version; shared by the API and the console.
pub async fn publish(
    app: &App,
    source: &str,
    target: Option<&str>,
    origin: Option<&str>,
    by: &str,
    note: &str,
) -> Result<PolicyRow, PublishError> {
    let target = target.unwrap_or("all").trim().to_string();
    Target::parse(&target).map_err(PublishError::Target)?;
    let origin = origin.filter(|o| !o.is_empty()).unwrap_or("policy.toml");
    let v = validate(source, origin, &app.policy_base).map_err(PublishError::Invalid)?;
    let row = app
        .store
        .insert_policy(&v.name, &v.id, source, &target, by, note)
        .await
        .map_err(PublishError::Store)?;
    app.metrics.policy_pushes.fetch_add(1, Ordering::Relaxed);
    announce(app).await;
    Ok(row)
}

/// Why a publish failed.
#[derive(Debug)]
pub enum PublishError {
    Target(String),
    Invalid(crate::validate::Invalid),
    Store(ControlError),
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> ApiError {
        match e {
            PublishError::Target(m) => fail(StatusCode::BAD_REQUEST, &m),
            PublishError::Invalid(inv) => invalid_response(&inv),
            PublishError::Store(e) => e.into(),
        }
    }
}

/// Wake this replica's streams and tell the others.
async fn announce(app: &App) {
    if let Err(e) = app.refresh_serial().await {
        tracing::warn!("policy serial refresh failed: {e}");
    }
    let serial = app.serial.borrow().value.to_string();
    if let Err(e) = app.store.notify(NOTIFY_CHANNEL, &serial).await {
        tracing::warn!("NOTIFY failed: {e}");
    }
}

async fn push_policy(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<PushRequest>,
) -> ApiResult<Response> {
    let row = publish(
        &app,
        &req.source,
        req.target.as_deref(),
        req.origin.as_deref(),
        &caller.name,
        "",
    )
    .await?;
    Ok((StatusCode::CREATED, Json(PolicySummary::from(&row))).into_response())
}

async fn validate_policy(
    State(app): State<App>,
    Json(req): Json<PushRequest>,
) -> ApiResult<Response> {
    if let Some(t) = &req.target {
        Target::parse(t).map_err(|m| fail(StatusCode::BAD_REQUEST, &m))?;
    }
    let origin = req.origin.as_deref().unwrap_or("policy.toml");
    match validate(&req.source, origin, &app.policy_base) {
        Ok(v) => Ok(
            Json(serde_json::json!({"valid": true, "name": v.name, "id": v.id})).into_response(),
        ),
        Err(inv) => Err(invalid_response(&inv)),
    }
}

async fn policy_history(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<PolicySummary>>> {
    let rows = app.store.policy_history(&name).await?;
    if rows.is_empty() {
        return Err(fail(StatusCode::NOT_FOUND, "no such policy"));
    }
    Ok(Json(rows.iter().map(PolicySummary::from).collect()))
}

/// One version with its source.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyVersion {
    #[serde(flatten)]
    pub summary: PolicySummary,
    pub source: String,
}

async fn policy_version(
    State(app): State<App>,
    Path((name, version)): Path<(String, i64)>,
) -> ApiResult<Json<PolicyVersion>> {
    let row = app
        .store
        .policy_version(&name, version)
        .await?
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "no such policy version"))?;
    Ok(Json(PolicyVersion {
        summary: PolicySummary::from(&row),
        source: row.source,
    }))
}

#[derive(Debug, Deserialize)]
struct DiffQuery {
    from: i64,
    to: Option<i64>,
}

/// A unified diff between two versions' sources.
pub fn unified_diff(name: &str, a: &PolicyRow, b: &PolicyRow) -> String {
    similar::TextDiff::from_lines(&a.source, &b.source)
        .unified_diff()
        .context_radius(3)
        .header(
            &format!("{name}@v{}", a.version),
            &format!("{name}@v{}", b.version),
        )
        .to_string()
}

async fn policy_diff(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(q): Query<DiffQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let history = app.store.policy_history(&name).await?;
    let latest = history
        .first()
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "no such policy"))?;
    let to = q.to.unwrap_or(latest.version);
    let find = |v: i64| history.iter().find(|p| p.version == v);
    let (Some(a), Some(b)) = (find(q.from), find(to)) else {
        return Err(fail(StatusCode::NOT_FOUND, "no such policy version"));
    };
    Ok(Json(serde_json::json!({
        "name": name, "from": a.version, "to": b.version, "diff": unified_diff(&name, a, b),
    })))
}

/// `POST /api/v1/policies/{name}/rollback`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub version: i64,
}

/// Publish version `version` of `name` again as the newest version.
pub async fn rollback(app: &App, name: &str, version: i64, by: &str) -> ApiResult<PolicyRow> {
    let old = app
        .store
        .policy_version(name, version)
        .await?
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "no such policy version"))?;
    let row = app
        .store
        .insert_policy(
            &old.name,
            &old.policy_id,
            &old.source,
            &old.target,
            by,
            &format!("rollback to v{version}"),
        )
        .await?;
    app.metrics.policy_pushes.fetch_add(1, Ordering::Relaxed);
    announce(app).await;
    Ok(row)
}

async fn rollback_policy(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(req): Json<RollbackRequest>,
) -> ApiResult<Response> {
    let row = rollback(&app, &name, req.version, &caller.name).await?;
    Ok((StatusCode::CREATED, Json(PolicySummary::from(&row))).into_response())
}

// ---- machines, sessions -------------------------------------------------------------

/// A machine as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct MachineView {
    pub id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub enrolled_at: String,
    pub last_seen: Option<String>,
    pub policy_held: Option<String>,
    /// A stream is open to this replica now.
    pub connected: bool,
    pub revoked: bool,
}

pub fn machine_view(app: &App, m: &MachineRow) -> MachineView {
    let connected = app
        .connected
        .lock()
        .map(|c| c.get(&m.id).is_some_and(|n| *n > 0))
        .unwrap_or(false);
    let pending = app.seen.lock().ok().and_then(|s| s.get(&m.id).cloned());
    let last_seen = pending.as_ref().map(|p| p.0).or(m.last_seen);
    let held = pending.and_then(|p| p.1).or_else(|| m.policy_held.clone());
    MachineView {
        id: m.id.clone(),
        hostname: m.hostname.clone(),
        labels: m.labels.clone(),
        enrolled_at: fmt_ms(m.enrolled_at),
        last_seen: last_seen.map(fmt_ms),
        policy_held: held,
        connected,
        revoked: m.revoked,
    }
}

async fn list_machines(State(app): State<App>) -> ApiResult<Json<Vec<MachineView>>> {
    let rows = app.store.list_machines().await?;
    Ok(Json(rows.iter().map(|m| machine_view(&app, m)).collect()))
}

async fn get_machine(
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<Json<MachineView>> {
    let m = app
        .store
        .machine(&id)
        .await?
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "no such machine"))?;
    Ok(Json(machine_view(&app, &m)))
}

async fn revoke_machine(State(app): State<App>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    if app.store.revoke_machine(&id).await? {
        // Its open streams get no further bundle: they read the revoked set anew.
        app.invalidate_active_set().await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(fail(StatusCode::NOT_FOUND, "no such machine"))
    }
}

/// A session as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionView {
    pub id: String,
    pub machine: String,
    pub user: String,
    pub agent: String,
    pub policy: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub exit_status: String,
    pub running: bool,
}

pub fn session_view(s: &SessionRow) -> SessionView {
    SessionView {
        id: s.id.clone(),
        machine: s.machine.clone(),
        user: s.user.clone(),
        agent: s.agent.clone(),
        policy: s.policy.clone(),
        started_at: s.started_at.map(fmt_ms),
        ended_at: s.ended_at.map(fmt_ms),
        exit_status: s.exit_status.clone(),
        running: s.ended_at.is_none(),
    }
}

#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<i64>,
}

async fn list_sessions(
    State(app): State<App>,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Json<Vec<SessionView>>> {
    let rows = app.store.list_sessions(q.limit.unwrap_or(500)).await?;
    Ok(Json(rows.iter().map(session_view).collect()))
}

// ---- audit --------------------------------------------------------------------------

/// Audit search parameters (the same filters as `warden audit query`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct AuditParams {
    pub surface: Option<String>,
    pub decision: Option<String>,
    pub session: Option<String>,
    pub machine: Option<String>,
    pub target: Option<String>,
    /// RFC 3339, a date, or a duration ago (`10m`, `2h`, `1d`).
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<i64>,
}

fn empty_none(v: &Option<String>) -> Option<String> {
    v.as_ref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Turn parameters into a store query, rejecting bad values with a message.
pub fn audit_query_of(p: &AuditParams, default_limit: i64) -> Result<AuditQuery, String> {
    let surface = empty_none(&p.surface);
    if let Some(s) = &surface {
        s.parse::<warden_audit::Surface>()
            .map_err(|e| e.to_string())?;
    }
    let decision = empty_none(&p.decision);
    if let Some(d) = &decision
        && d != "allow"
        && d != "deny"
    {
        return Err(format!("decision {d:?}: expected allow or deny"));
    }
    let now = warden_audit::OffsetDateTime::now_utc();
    let time = |v: &Option<String>| -> Result<Option<i64>, String> {
        match empty_none(v) {
            None => Ok(None),
            Some(s) => warden_audit::parse_since(&s, now)
                .map(|t| Some((t.unix_timestamp_nanos() / 1000) as i64))
                .map_err(|e| e.to_string()),
        }
    };
    Ok(AuditQuery {
        surface: surface.map(|s| s.to_ascii_lowercase()),
        decision,
        session: empty_none(&p.session),
        machine: empty_none(&p.machine),
        target: empty_none(&p.target),
        since_us: time(&p.since)?,
        until_us: time(&p.until)?,
        limit: p.limit.unwrap_or(default_limit),
        ascending: false,
    })
}

async fn audit_query(
    State(app): State<App>,
    Query(p): Query<AuditParams>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let q = audit_query_of(&p, 100).map_err(|m| fail(StatusCode::BAD_REQUEST, &m))?;
    let bodies = app.store.query_events(&q).await?;
    Ok(Json(
        bodies
            .iter()
            .filter_map(|b| serde_json::from_str(b).ok())
            .collect(),
    ))
}

async fn audit_export(State(app): State<App>, Query(p): Query<AuditParams>) -> ApiResult<Response> {
    let mut q = audit_query_of(&p, 1_000_000).map_err(|m| fail(StatusCode::BAD_REQUEST, &m))?;
    q.ascending = true;
    let bodies = app.store.query_events(&q).await?;
    let mut out = String::with_capacity(bodies.iter().map(|b| b.len() + 1).sum());
    for b in bodies {
        out.push_str(&b);
        out.push('\n');
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"audit.jsonl\"",
            ),
        ],
        out,
    )
        .into_response())
}

// ---- secrets ------------------------------------------------------------------------

/// Secret names: letters, digits, `_`, `-`, `.`; at most 128.
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

async fn list_secrets(State(app): State<App>) -> ApiResult<Json<serde_json::Value>> {
    let rows = app.store.list_secrets().await?;
    Ok(Json(serde_json::json!(
        rows.iter()
            .map(|s| serde_json::json!({
                "name": s.name, "updated_at": fmt_ms(s.updated_at), "updated_by": s.updated_by,
            }))
            .collect::<Vec<_>>()
    )))
}

/// `PUT /api/v1/secrets/{name}`.
#[derive(Deserialize)]
pub struct SecretValue {
    pub value: String,
}

/// Encrypt and store a secret; shared by the API and the console.
pub async fn store_secret(app: &App, name: &str, value: &str, by: &str) -> ApiResult<()> {
    if !valid_secret_name(name) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "secret names are 1-128 letters, digits, '_', '-' or '.'",
        ));
    }
    let sealed = app.master.seal(name, value.as_bytes())?;
    app.store.put_secret(name, &sealed, by).await?;
    Ok(())
}

async fn set_secret(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(v): Json<SecretValue>,
) -> ApiResult<StatusCode> {
    store_secret(&app, &name, &v.value, &caller.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_secret(State(app): State<App>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    if app.store.delete_secret(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(fail(StatusCode::NOT_FOUND, "no such secret"))
    }
}

// ---- tokens -------------------------------------------------------------------------

/// `POST /api/v1/tokens`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TokenRequest {
    /// `enroll` (default), `admin` or `auditor`.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Lifetime in seconds; enrollment tokens default to 24 hours.
    #[serde(default)]
    pub ttl_secs: Option<i64>,
}

/// A created token: the only time its value is shown.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenCreated {
    pub id: String,
    pub token: String,
    pub role: String,
    pub labels: BTreeMap<String, String>,
    pub expires_at: Option<String>,
}

/// Create a token; shared by the API and the console.
pub async fn make_token(app: &App, req: &TokenRequest, by: &str) -> ApiResult<TokenCreated> {
    let role = req.role.clone().unwrap_or_else(|| "enroll".into());
    if !matches!(role.as_str(), "enroll" | "admin" | "auditor") {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "role must be enroll, admin or auditor",
        ));
    }
    for (k, v) in &req.labels {
        if k.is_empty() || k.len() > 64 || v.len() > 256 || k.contains('=') {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "labels are KEY=VALUE with a non-empty key",
            ));
        }
    }
    let ttl = req
        .ttl_secs
        .or_else(|| (role == "enroll").then_some(86_400));
    if ttl.is_some_and(|t| t <= 0) {
        return Err(fail(StatusCode::BAD_REQUEST, "ttl_secs must be positive"));
    }
    let token = new_token()?;
    let row = TokenRow {
        id: random_id("t-")?,
        hash: hash_token(&token),
        role: role.clone(),
        name: req
            .name
            .clone()
            .unwrap_or_else(|| format!("{role} token by {by}")),
        labels: req.labels.clone(),
        created_at: now_ms(),
        expires_at: ttl.map(|t| now_ms().saturating_add(t.saturating_mul(1000))),
        one_time: role == "enroll",
        used_at: None,
        used_by: None,
    };
    app.store.insert_token(&row).await?;
    Ok(TokenCreated {
        id: row.id,
        token,
        role,
        labels: row.labels,
        expires_at: row.expires_at.map(fmt_ms),
    })
}

async fn create_token(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<TokenRequest>,
) -> ApiResult<Response> {
    let created = make_token(&app, &req, &caller.name).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list_tokens(State(app): State<App>) -> ApiResult<Json<Vec<TokenRow>>> {
    Ok(Json(app.store.list_tokens().await?))
}

async fn delete_token(State(app): State<App>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    if app.store.delete_token(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(fail(StatusCode::NOT_FOUND, "no such token"))
    }
}

// ---- node ---------------------------------------------------------------------------

/// The effective central policy for a machine: among the newest version of every
/// policy whose target matches, the most specific target wins (`machine:ID` over
/// `label:K=V` over `all`); between equally specific ones, the most recently pushed.
pub fn effective<'a>(policies: &'a [PolicyRow], m: &MachineRow) -> Option<&'a PolicyRow> {
    policies
        .iter()
        .filter_map(|p| {
            let t = Target::parse(&p.target).ok()?;
            t.matches(&m.id, &m.labels).then_some((t.rank(), p.seq, p))
        })
        .max_by_key(|(rank, seq, _)| (*rank, *seq))
        .map(|(_, _, p)| p)
}

fn etag_of(p: Option<&PolicyRow>) -> String {
    match p {
        Some(p) => format!("\"p{}\"", p.seq),
        None => "\"none\"".to_string(),
    }
}

/// Sign `m`'s bundle at the serial of `set`; with its ETag and the `name@vN` it holds.
fn sign_bundle(
    app: &App,
    set: &ActiveSet,
    m: &MachineRow,
) -> Result<(String, Option<String>, SignedBundle), ControlError> {
    let eff = effective(&set.policies, m);
    let payload = BundlePayload {
        format: 1,
        machine: m.id.clone(),
        serial: set.serial,
        issued_at: fmt_ms(now_ms()),
        policy: eff.map(|p| BundlePolicy {
            name: p.name.clone(),
            version: p.version,
            id: p.policy_id.clone(),
            source: p.source.clone(),
            target: p.target.clone(),
            created_by: p.created_by.clone(),
            created_at: fmt_ms(p.created_at),
        }),
    };
    let signed = SignedBundle::sign(&payload, &app.signing)?;
    app.metrics.bundles_served.fetch_add(1, Ordering::Relaxed);
    Ok((
        etag_of(eff),
        eff.map(|p| format!("{}@v{}", p.name, p.version)),
        signed,
    ))
}

/// Remember which policy a machine was served (written to the store in batches).
fn record_served(app: &App, machine: &str, held: Option<String>) {
    if let Ok(mut seen) = app.seen.lock() {
        seen.insert(machine.to_string(), (now_ms(), held));
    }
}

async fn node_bundle(
    State(app): State<App>,
    Extension(MachineCaller(m)): Extension<MachineCaller>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let set = app.active_set().await?;
    let eff = effective(&set.policies, &m);
    let etag = etag_of(eff);
    let inm = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if inm == Some(etag.as_str()) {
        record_served(
            &app,
            &m.id,
            eff.map(|p| format!("{}@v{}", p.name, p.version)),
        );
        app.metrics
            .bundles_not_modified
            .fetch_add(1, Ordering::Relaxed);
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&etag) {
            r.headers_mut().insert(header::ETAG, v);
        }
        return Ok(r);
    }
    let (etag, held, signed) = sign_bundle(&app, &set, &m)?;
    record_served(&app, &m.id, held);
    let mut r = Json(signed).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    Ok(r)
}

/// Decrements the open-stream counts when a stream ends.
struct StreamGuard {
    app: App,
    machine: String,
    /// The machine as it was when the stream opened (labels do not change).
    machine_row: MachineRow,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.app
            .metrics
            .streams_open
            .fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut c) = self.app.connected.lock()
            && let Some(n) = c.get_mut(&self.machine)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.machine);
            }
        }
    }
}

async fn node_stream(
    State(app): State<App>,
    Extension(MachineCaller(m)): Extension<MachineCaller>,
) -> Response {
    app.metrics.streams_open.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut c) = app.connected.lock() {
        *c.entry(m.id.clone()).or_insert(0) += 1;
    }
    let guard = StreamGuard {
        app: app.clone(),
        machine: m.id.clone(),
        machine_row: m,
    };
    let rx = app.serial.subscribe();
    let stopping = app.stopping.subscribe();
    let stream = futures_util::stream::unfold(
        (rx, true, guard, stopping),
        |(mut rx, first, guard, mut stopping)| async move {
            if *stopping.borrow() {
                return None;
            }
            if !first {
                tokio::select! {
                    changed = rx.changed() => changed.ok()?,
                    _ = stopping.wait_for(|s| *s) => return None,
                }
            }
            let s = *rx.borrow_and_update();
            // The notice carries the machine's signed bundle, so that a push does not
            // turn into one fetch per machine: the node verifies it exactly as a
            // fetched one. When it cannot be built here, the notice alone still tells
            // the node to fetch.
            let mut notice = StreamNotice {
                serial: s.value,
                bundle: None,
                etag: None,
            };
            match guard.app.active_set().await {
                Ok(set) if set.revoked.contains(&guard.machine_row.id) => return None,
                Ok(set) => match sign_bundle(&guard.app, &set, &guard.machine_row) {
                    Ok((etag, held, bundle)) => {
                        record_served(&guard.app, &guard.machine, held);
                        notice.serial = set.serial;
                        notice.bundle = Some(bundle);
                        notice.etag = Some(etag);
                    }
                    Err(e) => tracing::warn!("signing a bundle for the stream: {e}"),
                },
                Err(e) => tracing::warn!("reading the policies for the stream: {e}"),
            }
            if !first {
                let micros = s.changed_at.elapsed().as_micros();
                guard
                    .app
                    .metrics
                    .observe_fanout(u64::try_from(micros).unwrap_or(u64::MAX));
            }
            let data = serde_json::to_string(&notice).unwrap_or_else(|_| "{}".into());
            let ev = SseEvent::default().event("bundle").data(data);
            Some((Ok::<_, Infallible>(ev), (rx, false, guard, stopping)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn text_of(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Most events a node may upload in one batch.
pub const MAX_BATCH: usize = 5000;

async fn node_audit(
    State(app): State<App>,
    Extension(MachineCaller(m)): Extension<MachineCaller>,
    Json(batch): Json<AuditBatch>,
) -> ApiResult<Json<AuditAck>> {
    if batch.events.len() > MAX_BATCH {
        return Err(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("at most {MAX_BATCH} events per batch"),
        ));
    }
    let mut rows = Vec::with_capacity(batch.events.len());
    let mut sessions = Vec::new();
    for (i, value) in batch.events.into_iter().enumerate() {
        let mut ev: warden_audit::Event = serde_json::from_value(value).map_err(|e| {
            fail(
                StatusCode::BAD_REQUEST,
                &format!("event {i} is not a valid audit event: {e}"),
            )
        })?;
        if ev.id.is_empty() || ev.id.len() > 128 {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                &format!("event {i} has no usable id"),
            ));
        }
        // The signature says which machine sent it; the event cannot claim another.
        ev.machine = m.id.clone();
        let body = serde_json::to_string(&ev)
            .map_err(|e| fail(StatusCode::BAD_REQUEST, &format!("event {i}: {e}")))?;
        let time_us = (ev.time.unix_timestamp_nanos() / 1000) as i64;
        if ev.surface == warden_audit::Surface::Session {
            sessions.push(SessionRow {
                id: ev.session.clone(),
                machine: m.id.clone(),
                user: ev.user.clone(),
                agent: text_of(ev.extra.get("agent")),
                policy: ev.policy.clone(),
                started_at: (ev.action == "start").then_some(time_us / 1000),
                ended_at: (ev.action == "end").then_some(time_us / 1000),
                exit_status: text_of(ev.extra.get("exit_status")),
            });
        }
        rows.push(AuditRow {
            id: ev.id.clone(),
            time_us,
            machine: m.id.clone(),
            session: ev.session.clone(),
            user: ev.user.clone(),
            surface: ev.surface.as_str().to_string(),
            action: ev.action.clone(),
            target: ev.target.clone(),
            decision: ev.decision.as_str().to_string(),
            body,
        });
    }
    let received = rows.len() as u64;
    let stored = app.store.insert_events(&rows).await?;
    for s in &sessions {
        if s.ended_at.is_some() {
            app.store.session_ended(s).await?;
            app.store.revoke_leases(&m.id, &s.id).await?;
        } else if s.started_at.is_some() {
            app.store.session_started(s).await?;
        }
    }
    app.metrics
        .audit_ingested
        .fetch_add(stored, Ordering::Relaxed);
    app.metrics
        .audit_duplicates
        .fetch_add(received - stored, Ordering::Relaxed);
    Ok(Json(AuditAck { received, stored }))
}

async fn node_lease(
    State(app): State<App>,
    Extension(MachineCaller(m)): Extension<MachineCaller>,
    Json(req): Json<LeaseRequest>,
) -> ApiResult<Json<LeaseResponse>> {
    if req.session.is_empty() || req.session.len() > 128 || !valid_secret_name(&req.name) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "session and a valid name are required",
        ));
    }
    let (_, policies) = app.active_policies().await?;
    let bound = effective(&policies, &m)
        .map(|p| vault_bindings(&p.source))
        .unwrap_or_default();
    if !bound.contains(&req.name) {
        return Err(fail(
            StatusCode::FORBIDDEN,
            &format!(
                "the policy in force for this machine does not bind vault:{}",
                req.name
            ),
        ));
    }
    if app.store.session_closed(&m.id, &req.session).await? {
        return Err(fail(StatusCode::CONFLICT, "that session has ended"));
    }
    let sealed = app
        .store
        .sealed_secret(&req.name)
        .await?
        .ok_or_else(|| fail(StatusCode::NOT_FOUND, "no such secret in the vault"))?;
    let plain = app.master.open(&req.name, &sealed)?;
    let value = String::from_utf8(plain.to_vec())
        .map_err(|_| fail(StatusCode::UNPROCESSABLE_ENTITY, "secret is not UTF-8"))?;
    let lease_id = random_id("l-")?;
    app.store
        .insert_lease(&lease_id, &m.id, &req.session, &req.name)
        .await?;
    Ok(Json(LeaseResponse {
        lease_id,
        name: req.name,
        session: req.session,
        value,
    }))
}

async fn node_end_session(
    State(app): State<App>,
    Extension(MachineCaller(m)): Extension<MachineCaller>,
    Path(session): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let revoked = app.store.revoke_leases(&m.id, &session).await?;
    app.store
        .session_ended(&SessionRow {
            id: session.clone(),
            machine: m.id.clone(),
            user: String::new(),
            agent: String::new(),
            policy: String::new(),
            started_at: None,
            ended_at: Some(now_ms()),
            exit_status: String::new(),
        })
        .await?;
    Ok(Json(
        serde_json::json!({"session": session, "revoked": revoked}),
    ))
}
