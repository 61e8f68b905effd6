//! The web console: server-rendered HTML pages at `/` — overview, machines, sessions,
//! policies (editor with validation, history, diff, rollback), audit search, secrets
//! (names only) and tokens.
//!
//! Security model:
//! - login with an `admin` or `auditor` token; the server keeps only the SHA-256 of the
//!   random session id it puts in an `HttpOnly; SameSite=Strict` cookie (`Secure` when
//!   the server speaks TLS). A session lasts 8 hours and ends at once when its token
//!   is revoked or expires, or on logout;
//! - every state-changing request is a POST that must carry the session's CSRF token in
//!   a hidden form field, and is refused when an `Origin` header names another host.
//!   The login form itself uses a double-submit cookie;
//! - [`routes`] is the console's route table, like the API's: every route declares
//!   who may use it and one middleware enforces that before any handler runs;
//! - no page shows a secret value or a token, except a newly created token, once, in
//!   the answer to the form that created it. Pages run no script (the CSP forbids it).

use crate::api::{
    AuditParams, MachineView, TokenRequest, audit_query_of, machine_view, make_token, publish,
    rollback, session_view, store_secret, unified_diff,
};
use crate::auth::Access;
use crate::crypto::{hash_token, random_bytes};
use crate::error::ControlError;
use crate::server::App;
use crate::store::{ConsoleSession, fmt_ms, now_ms};
use crate::validate::{Target, validate};
use axum::body::Body;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Extension, Form, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The session cookie.
pub const COOKIE: &str = "warden_session";
/// The login form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "warden_login";
/// How long a console session lasts.
pub const SESSION_TTL_MS: i64 = 8 * 3600 * 1000;
/// Largest form body accepted.
const MAX_FORM: usize = 1 << 20;

/// One console route: what it is and who may use it (`Public`, `Read` or `Admin`).
#[derive(Debug, Clone, Serialize)]
pub struct ConsoleRoute {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
}

/// The logged-in user of a console request.
#[derive(Debug, Clone)]
pub struct ConsoleUser {
    pub session: ConsoleSession,
}

impl ConsoleUser {
    fn admin(&self) -> bool {
        self.session.role == "admin"
    }
}

macro_rules! croute {
    ($m:literal, $p:literal, $a:expr, $s:literal, $h:expr) => {
        (
            ConsoleRoute {
                method: $m,
                path: $p,
                access: $a,
                summary: $s,
            },
            $h,
        )
    };
}

/// Every console route, with its handler.
pub fn console_routes() -> Vec<(ConsoleRoute, MethodRouter<App>)> {
    use Access::*;
    vec![
        croute!("GET", "/console.css", Public, "Style sheet.", get(css)),
        croute!("GET", "/login", Public, "Login form.", get(login_form)),
        croute!(
            "POST",
            "/login",
            Public,
            "Log in with a token.",
            post(login)
        ),
        croute!("POST", "/logout", Read, "Log out.", post(logout)),
        croute!("GET", "/", Read, "Overview.", get(overview)),
        croute!("GET", "/machines", Read, "Machines.", get(machines)),
        croute!(
            "POST",
            "/machines/{id}/revoke",
            Admin,
            "Revoke a machine.",
            post(revoke_machine)
        ),
        croute!("GET", "/sessions", Read, "Sessions.", get(sessions)),
        croute!("GET", "/policies", Read, "Policies.", get(policies)),
        croute!(
            "GET",
            "/policies/edit",
            Admin,
            "Policy editor.",
            get(editor)
        ),
        croute!(
            "POST",
            "/policies/edit",
            Admin,
            "Validate or publish from the editor.",
            post(editor_submit)
        ),
        croute!(
            "GET",
            "/policies/{name}",
            Read,
            "A policy's history and diff.",
            get(policy_page)
        ),
        croute!(
            "GET",
            "/policies/{name}/v/{version}",
            Read,
            "One version's source.",
            get(policy_version_page)
        ),
        croute!(
            "POST",
            "/policies/{name}/rollback",
            Admin,
            "Roll a policy back.",
            post(rollback_submit)
        ),
        croute!("GET", "/audit", Read, "Audit search.", get(audit)),
        croute!(
            "GET",
            "/audit/export",
            Read,
            "Audit export (JSON lines).",
            get(audit_export)
        ),
        croute!("GET", "/secrets", Read, "Secret names.", get(secrets)),
        croute!("POST", "/secrets", Admin, "Set a secret.", post(secret_set)),
        croute!(
            "POST",
            "/secrets/{name}/delete",
            Admin,
            "Delete a secret.",
            post(secret_delete)
        ),
        croute!("GET", "/tokens", Admin, "Tokens.", get(tokens)),
        croute!(
            "POST",
            "/tokens",
            Admin,
            "Create a token.",
            post(token_create)
        ),
        croute!(
            "POST",
            "/tokens/{id}/delete",
            Admin,
            "Revoke a token.",
            post(token_delete)
        ),
    ]
}

/// The console route list without handlers.
pub fn console_route_specs() -> Vec<ConsoleRoute> {
    console_routes().into_iter().map(|(s, _)| s).collect()
}

/// Add the console's routes, each behind [`enforce`] for its access.
pub fn routes(mut r: Router<App>, app: App) -> Router<App> {
    for (spec, handler) in console_routes() {
        let access = spec.access;
        let layered = handler.route_layer(from_fn_with_state(
            app.clone(),
            move |s: State<App>, req: Request, next: Next| enforce(s, access, req, next),
        ));
        r = r.route(spec.path, layered);
    }
    r
}

// ---- authentication, CSRF -----------------------------------------------------------

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Equal in time independent of where the inputs differ.
fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// An `Origin` header, when present, must name this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !host.is_empty() && origin_host == host
}

fn forbidden(message: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(page_html(
            "Forbidden",
            None,
            &format!("<p>{}</p>", esc(message)),
        )),
    )
        .into_response()
}

fn internal(e: ControlError) -> Response {
    tracing::error!("console request failed: {e}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Html(page_html(
            "Error",
            None,
            "<p>Internal error; the server log has the details.</p>",
        )),
    )
        .into_response()
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// The middleware: the session for `Read`/`Admin` routes, and for every POST the same
/// origin and the CSRF token (the login form: its double-submit cookie).
async fn enforce(State(app): State<App>, access: Access, req: Request, next: Next) -> Response {
    let post = req.method() == Method::POST;
    if post && !same_origin(req.headers()) {
        return forbidden("cross-origin form submission refused");
    }
    let (req, csrf) = if post {
        match buffer_form(req).await {
            Ok(x) => x,
            Err(r) => return r,
        }
    } else {
        (req, String::new())
    };
    if access == Access::Public {
        if post {
            let expected = cookie(req.headers(), LOGIN_COOKIE).unwrap_or("");
            if expected.is_empty() || !ct_eq(expected, &csrf) {
                return forbidden(
                    "the login form expired or was not sent by this console; reload the \
                     login page and try again",
                );
            }
        }
        return next.run(req).await;
    }
    let hash = match cookie(req.headers(), COOKIE) {
        Some(c) if !c.is_empty() => hash_token(c),
        _ => return to_login(post),
    };
    let session = match app.store.console_session(&hash).await {
        Ok(Some(s)) => s,
        Ok(None) => return to_login(post),
        Err(e) => return internal(e),
    };
    if post && !ct_eq(&session.csrf, &csrf) {
        return forbidden("missing or wrong CSRF token; reload the page and submit again");
    }
    if access == Access::Admin && session.role != "admin" {
        return forbidden("this needs an admin token; you are logged in as an auditor");
    }
    let mut req = req;
    req.extensions_mut().insert(ConsoleUser { session });
    next.run(req).await
}

fn to_login(post: bool) -> Response {
    if post {
        forbidden("not logged in, or the session expired; log in again")
    } else {
        Redirect::to("/login").into_response()
    }
}

/// Read a form body (bounded) and return the request rebuilt with it, plus its `csrf`.
async fn buffer_form(req: Request) -> Result<(Request, String), Response> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM)
        .await
        .map_err(|_| (StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response())?;
    let csrf = form_field(&parts.headers, &bytes)
        .await
        .map(|f| f.csrf)
        .unwrap_or_default();
    Ok((Request::from_parts(parts, Body::from(bytes)), csrf))
}

async fn form_field(headers: &HeaderMap, bytes: &bytes::Bytes) -> Option<CsrfField> {
    let mut b = Request::builder().method(Method::POST).uri("/");
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    let req = b.body(Body::from(bytes.clone())).ok()?;
    Form::<CsrfField>::from_request(req, &())
        .await
        .ok()
        .map(|f| f.0)
}

fn set_cookie(resp: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn cookie_attrs(app: &App) -> &'static str {
    if app.config.tls.is_some() {
        "Path=/; HttpOnly; SameSite=Strict; Secure"
    } else {
        "Path=/; HttpOnly; SameSite=Strict"
    }
}

fn random_hex() -> Result<String, ControlError> {
    Ok(hex::encode(random_bytes::<32>()?))
}

// ---- HTML ---------------------------------------------------------------------------

/// Escape text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encode a path or query component.
fn enc(s: &str) -> String {
    crate::client::encode_component(s)
}

fn page_html(title: &str, user: Option<&ConsoleUser>, body: &str) -> String {
    let nav = match user {
        Some(u) => {
            let mut n = String::from(
                "<nav><a href=\"/\">Overview</a> <a href=\"/machines\">Machines</a> \
                 <a href=\"/sessions\">Sessions</a> <a href=\"/policies\">Policies</a> \
                 <a href=\"/audit\">Audit</a> <a href=\"/secrets\">Secrets</a>",
            );
            if u.admin() {
                n.push_str(" <a href=\"/tokens\">Tokens</a>");
            }
            let _ = write!(
                n,
                "<span class=\"who\">{} ({})</span>{}<button id=\"logout\">Log out</button>\
                 </form></nav>",
                esc(&u.session.name),
                esc(&u.session.role),
                form_open("/logout", &u.session.csrf, "inline"),
            );
            n
        }
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{t} · Warden</title><link rel=\"stylesheet\" href=\"/console.css\"></head>\
         <body><header><strong>Warden</strong> control plane</header>{nav}<main>\
         <h1>{t}</h1>{body}</main></body></html>",
        t = esc(title)
    )
}

fn page(title: &str, user: &ConsoleUser, body: &str) -> Response {
    Html(page_html(title, Some(user), body)).into_response()
}

fn form_open(action: &str, csrf: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"{class}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(action),
        esc(csrf)
    )
}

fn notice(kind: &str, text: &str) -> String {
    format!("<p class=\"{kind}\" id=\"{kind}\">{}</p>", esc(text))
}

fn table(headers: &[&str], rows: &[Vec<String>], id: &str) -> String {
    let mut t = format!("<table id=\"{id}\"><thead><tr>");
    for h in headers {
        let _ = write!(t, "<th>{}</th>", esc(h));
    }
    t.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            t,
            "<tr><td colspan=\"{}\" class=\"empty\">none</td></tr>",
            headers.len()
        );
    }
    for r in rows {
        t.push_str("<tr>");
        for cell in r {
            // Cells are HTML already (escaped by the caller).
            let _ = write!(t, "<td>{cell}</td>");
        }
        t.push_str("</tr>");
    }
    t.push_str("</tbody></table>");
    t
}

fn opt(v: &Option<String>) -> String {
    esc(v.as_deref().unwrap_or("—"))
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const CSS: &str = "\
body{font-family:system-ui,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}\
header{background:#1f2937;color:#fff;padding:.6em 1em}\
nav{padding:.5em 1em;background:#e5e7eb}nav a{margin-right:1em}\
nav .who{margin:0 1em;color:#555}form.inline{display:inline}\
main{padding:1em 2em}table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #d1d5db;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f3f4f6}td.empty{color:#888}\
textarea{width:100%;font-family:monospace}pre{background:#f3f4f6;padding:.6em;overflow:auto}\
.error{color:#b91c1c;font-weight:bold}.ok{color:#047857;font-weight:bold}\
.token{font-family:monospace;background:#fef3c7;padding:.3em}\
.deny{color:#b91c1c}.allow{color:#047857}label{margin-right:1em}";

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

// ---- login --------------------------------------------------------------------------

fn login_page(app: &App, message: Option<&str>, status: StatusCode) -> Response {
    let csrf = match random_hex() {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let mut body = String::new();
    if let Some(m) = message {
        body.push_str(&notice("error", m));
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"csrf\" \
         value=\"{csrf}\"><label>Token <input type=\"password\" name=\"token\" id=\"token\" \
         autocomplete=\"off\" required></label> <button id=\"login\">Log in</button></form>\
         <p>Use an admin or auditor token (<code>warden token create</code>, or the first \
         admin token the server printed).</p>"
    );
    let mut resp = (status, Html(page_html("Log in", None, &body))).into_response();
    set_cookie(
        &mut resp,
        &format!("{LOGIN_COOKIE}={csrf}; Max-Age=3600; {}", cookie_attrs(app)),
    );
    resp
}

async fn login_form(State(app): State<App>) -> Response {
    login_page(&app, None, StatusCode::OK)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(State(app): State<App>, Form(f): Form<LoginForm>) -> Response {
    let caller = match crate::auth::caller_for(&app, f.token.trim()).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return login_page(
                &app,
                Some("unknown or expired token; use an admin or auditor token"),
                StatusCode::UNAUTHORIZED,
            );
        }
        Err(r) => return r,
    };
    let (sid, csrf) = match (random_hex(), random_hex()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return internal(e),
    };
    if let Err(e) = app
        .store
        .insert_console_session(
            &hash_token(&sid),
            &caller.token_id,
            &caller.role,
            &csrf,
            now_ms() + SESSION_TTL_MS,
        )
        .await
    {
        return internal(e);
    }
    let mut resp = Redirect::to("/").into_response();
    *resp.status_mut() = StatusCode::SEE_OTHER;
    set_cookie(
        &mut resp,
        &format!(
            "{COOKIE}={sid}; Max-Age={}; {}",
            SESSION_TTL_MS / 1000,
            cookie_attrs(&app)
        ),
    );
    set_cookie(
        &mut resp,
        &format!("{LOGIN_COOKIE}=; Max-Age=0; {}", cookie_attrs(&app)),
    );
    resp
}

async fn logout(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Some(c) = cookie(&headers, COOKIE)
        && let Err(e) = app.store.delete_console_session(&hash_token(c)).await
    {
        return internal(e);
    }
    let mut resp = Redirect::to("/login").into_response();
    set_cookie(
        &mut resp,
        &format!("{COOKIE}=; Max-Age=0; {}", cookie_attrs(&app)),
    );
    resp
}

// ---- overview, machines, sessions -----------------------------------------------------

type Page = Result<Response, Response>;

fn or_page(r: Page) -> Response {
    r.unwrap_or_else(|e| e)
}

async fn overview(State(app): State<App>, Extension(u): Extension<ConsoleUser>) -> Response {
    or_page(overview_page(&app, &u).await)
}

async fn overview_page(app: &App, u: &ConsoleUser) -> Page {
    let machines = app.store.list_machines().await.map_err(internal)?;
    let views: Vec<MachineView> = machines.iter().map(|m| machine_view(app, m)).collect();
    let connected = views.iter().filter(|m| m.connected).count();
    let sessions = app.store.list_sessions(10_000).await.map_err(internal)?;
    let running = sessions.iter().filter(|s| s.ended_at.is_none()).count();
    let policies = app.store.active_policies().await.map_err(internal)?;
    let events = app.store.count_events().await.map_err(internal)?;
    let q = audit_query_of(
        &AuditParams {
            decision: Some("deny".into()),
            ..AuditParams::default()
        },
        10,
    )
    .map_err(|m| forbidden(&m))?;
    let denies = app.store.query_events(&q).await.map_err(internal)?;
    let mut body = format!(
        "<ul id=\"summary\"><li>{} machines enrolled, {connected} connected now</li>\
         <li>{running} sessions running</li><li>{} policies, serial {}</li>\
         <li>{events} audit events stored</li></ul><h2>Latest denials</h2>",
        machines.len(),
        policies.len(),
        app.serial.borrow().value,
    );
    body.push_str(&audit_table(&denies));
    Ok(page("Overview", u, &body))
}

async fn machines(State(app): State<App>, Extension(u): Extension<ConsoleUser>) -> Response {
    or_page(machines_page(&app, &u).await)
}

async fn machines_page(app: &App, u: &ConsoleUser) -> Page {
    let rows = app.store.list_machines().await.map_err(internal)?;
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|m| {
            let v = machine_view(app, m);
            let mut action = String::new();
            if u.admin() && !v.revoked {
                action = format!(
                    "{}<button>Revoke</button></form>",
                    form_open(
                        &format!("/machines/{}/revoke", enc(&v.id)),
                        &u.session.csrf,
                        "inline"
                    )
                );
            }
            vec![
                format!("<code>{}</code>", esc(&v.id)),
                esc(&v.hostname),
                esc(&labels_text(&v.labels)),
                opt(&v.last_seen),
                format!("<span class=\"held\">{}</span>", opt(&v.policy_held)),
                if v.connected { "yes" } else { "no" }.into(),
                if v.revoked { "revoked" } else { "active" }.into(),
                action,
            ]
        })
        .collect();
    let body = table(
        &[
            "id",
            "hostname",
            "labels",
            "last seen",
            "policy held",
            "connected",
            "state",
            "",
        ],
        &rows,
        "machines",
    );
    Ok(page("Machines", u, &body))
}

async fn revoke_machine(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.store.revoke_machine(&id).await {
        Ok(_) => Redirect::to("/machines").into_response(),
        Err(e) => internal(e),
    }
}

async fn sessions(State(app): State<App>, Extension(u): Extension<ConsoleUser>) -> Response {
    or_page(sessions_page(&app, &u).await)
}

async fn sessions_page(app: &App, u: &ConsoleUser) -> Page {
    let rows = app.store.list_sessions(1000).await.map_err(internal)?;
    let (running, ended): (Vec<_>, Vec<_>) = rows.iter().partition(|s| s.ended_at.is_none());
    let render = |list: &[&crate::store::SessionRow]| -> Vec<Vec<String>> {
        list.iter()
            .map(|s| {
                let v = session_view(s);
                vec![
                    format!(
                        "<a href=\"/audit?session={}\"><code>{}</code></a>",
                        enc(&v.id),
                        esc(&v.id)
                    ),
                    esc(&v.machine),
                    esc(&v.user),
                    esc(&v.agent),
                    esc(&v.policy),
                    opt(&v.started_at),
                    opt(&v.ended_at),
                    esc(&v.exit_status),
                ]
            })
            .collect()
    };
    let cols = [
        "session", "machine", "user", "agent", "policy", "started", "ended", "exit",
    ];
    let body = format!(
        "<h2>Running now</h2>{}<h2>Ended</h2>{}",
        table(&cols, &render(&running), "running"),
        table(&cols, &render(&ended), "ended")
    );
    Ok(page("Sessions", u, &body))
}

// ---- policies -----------------------------------------------------------------------

async fn policies(State(app): State<App>, Extension(u): Extension<ConsoleUser>) -> Response {
    or_page(policies_page(&app, &u).await)
}

async fn policies_page(app: &App, u: &ConsoleUser) -> Page {
    let rows = app.store.active_policies().await.map_err(internal)?;
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|p| {
            vec![
                format!(
                    "<a href=\"/policies/{}\">{}</a>",
                    enc(&p.name),
                    esc(&p.name)
                ),
                format!("v{}", p.version),
                esc(&p.target),
                format!("<code>{}</code>", esc(&p.policy_id)),
                esc(&p.created_by),
                esc(&fmt_ms(p.created_at)),
            ]
        })
        .collect();
    let mut body = String::new();
    if u.admin() {
        body.push_str("<p><a id=\"new-policy\" href=\"/policies/edit\">New policy</a></p>");
    }
    body.push_str(&table(
        &["name", "version", "target", "id", "by", "at"],
        &rows,
        "policies",
    ));
    Ok(page("Policies", u, &body))
}

#[derive(Deserialize, Default)]
struct EditQuery {
    name: Option<String>,
}

async fn editor(
    State(app): State<App>,
    Extension(u): Extension<ConsoleUser>,
    Query(q): Query<EditQuery>,
) -> Response {
    let latest = match &q.name {
        Some(n) => match app.store.policy_history(n).await {
            Ok(h) => h.into_iter().next(),
            Err(e) => return internal(e),
        },
        None => None,
    };
    let (source, target) = latest
        .map(|p| (p.source, p.target))
        .unwrap_or_else(|| (String::new(), "all".into()));
    editor_page(&u, &source, &target, "", StatusCode::OK)
}

fn editor_page(
    u: &ConsoleUser,
    source: &str,
    target: &str,
    result: &str,
    status: StatusCode,
) -> Response {
    let body = format!(
        "{result}{}<p><label>Target <input name=\"target\" id=\"target\" value=\"{}\"></label> \
         <small>all, label:KEY=VALUE or machine:ID</small></p>\
         <textarea name=\"source\" id=\"source\" rows=\"24\" spellcheck=\"false\">{}</textarea>\
         <p><button name=\"action\" value=\"validate\" id=\"validate\">Validate</button> \
         <button name=\"action\" value=\"publish\" id=\"publish\">Publish</button></p></form>",
        form_open("/policies/edit", &u.session.csrf, "editor"),
        esc(target),
        esc(source),
    );
    (status, page("Edit policy", u, &body)).into_response()
}

#[derive(Deserialize)]
struct EditForm {
    #[serde(default)]
    source: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    action: String,
}

fn diagnostics_html(inv: &crate::validate::Invalid) -> String {
    let mut s = notice("error", "The policy is invalid; nothing was published.");
    s.push_str("<ul id=\"diagnostics\">");
    for d in &inv.diagnostics {
        let _ = write!(
            s,
            "<li>{}:{}:{}: {}{}</li>",
            esc(&d.file),
            d.line,
            d.col,
            esc(&d.message),
            d.hint
                .as_deref()
                .map(|h| format!(" — {}", esc(h)))
                .unwrap_or_default()
        );
    }
    let _ = write!(s, "</ul><pre>{}</pre>", esc(&inv.rendered));
    s
}

async fn editor_submit(
    State(app): State<App>,
    Extension(u): Extension<ConsoleUser>,
    Form(f): Form<EditForm>,
) -> Response {
    let target = if f.target.trim().is_empty() {
        "all".to_string()
    } else {
        f.target.trim().to_string()
    };
    let show = |result: String, status| editor_page(&u, &f.source, &target, &result, status);
    if let Err(m) = Target::parse(&target) {
        return show(notice("error", &m), StatusCode::BAD_REQUEST);
    }
    if f.action == "publish" {
        return match publish(&app, &f.source, Some(&target), None, &u.session.name, "").await {
            Ok(row) => Redirect::to(&format!(
                "/policies/{}?published={}",
                enc(&row.name),
                row.version
            ))
            .into_response(),
            Err(crate::api::PublishError::Invalid(inv)) => {
                show(diagnostics_html(&inv), StatusCode::UNPROCESSABLE_ENTITY)
            }
            Err(crate::api::PublishError::Target(m)) => {
                show(notice("error", &m), StatusCode::BAD_REQUEST)
            }
            Err(crate::api::PublishError::Store(e)) => internal(e),
        };
    }
    match validate(&f.source, "policy.toml", &app.policy_base) {
        Ok(v) => show(
            notice(
                "ok",
                &format!("Valid: {} ({}). Not published yet.", v.name, v.id),
            ),
            StatusCode::OK,
        ),
        Err(inv) => show(diagnostics_html(&inv), StatusCode::UNPROCESSABLE_ENTITY),
    }
}

#[derive(Deserialize, Default)]
struct HistoryQuery {
    from: Option<i64>,
    to: Option<i64>,
    published: Option<i64>,
    rolled_back: Option<i64>,
}

async fn policy_page(
    State(app): State<App>,
    Extension(u): Extension<ConsoleUser>,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    or_page(history_page(&app, &u, &name, &q).await)
}

async fn history_page(app: &App, u: &ConsoleUser, name: &str, q: &HistoryQuery) -> Page {
    let history = app.store.policy_history(name).await.map_err(internal)?;
    let Some(latest) = history.first() else {
        return Err((
            StatusCode::NOT_FOUND,
            page("No such policy", u, "<p>No policy by that name.</p>"),
        )
            .into_response());
    };
    let mut body = String::new();
    if let Some(v) = q.published {
        body.push_str(&notice("ok", &format!("Published {name} v{v}.")));
    }
    if let Some(v) = q.rolled_back {
        body.push_str(&notice("ok", &format!("Rolled back: published as v{v}.")));
    }
    if u.admin() {
        let _ = write!(
            body,
            "<p><a id=\"edit\" href=\"/policies/edit?name={}\">Edit</a></p>",
            enc(name)
        );
    }
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|p| {
            let mut action = String::new();
            if u.admin() && p.version != latest.version {
                action = format!(
                    "{}<input type=\"hidden\" name=\"version\" value=\"{}\">\
                     <button>Roll back to v{}</button></form>",
                    form_open(
                        &format!("/policies/{}/rollback", enc(name)),
                        &u.session.csrf,
                        "inline"
                    ),
                    p.version,
                    p.version
                );
            }
            vec![
                format!(
                    "<a href=\"/policies/{}/v/{}\">v{}</a>",
                    enc(name),
                    p.version,
                    p.version
                ),
                esc(&p.target),
                format!("<code>{}</code>", esc(&p.policy_id)),
                esc(&p.created_by),
                esc(&fmt_ms(p.created_at)),
                esc(&p.note),
                action,
            ]
        })
        .collect();
    body.push_str(&table(
        &["version", "target", "id", "by", "at", "note", ""],
        &rows,
        "history",
    ));
    let to = q.to.unwrap_or(latest.version);
    let from = q.from.unwrap_or((to - 1).max(1));
    let _ = write!(
        body,
        "<h2>Diff</h2><form method=\"get\" action=\"/policies/{}\"><label>from \
         <input name=\"from\" value=\"{from}\" size=\"4\"></label><label>to \
         <input name=\"to\" value=\"{to}\" size=\"4\"></label><button>Show diff</button></form>",
        enc(name)
    );
    let find = |v: i64| history.iter().find(|p| p.version == v);
    match (find(from), find(to)) {
        (Some(a), Some(b)) => {
            let _ = write!(
                body,
                "<pre id=\"diff\">{}</pre>",
                esc(&unified_diff(name, a, b))
            );
        }
        _ => body.push_str(&notice("error", "no such version")),
    }
    Ok(page(&format!("Policy {name}"), u, &body))
}

async fn policy_version_page(
    State(app): State<App>,
    Extension(u): Extension<ConsoleUser>,
    Path((name, version)): Path<(String, i64)>,
) -> Response {
    match app.store.policy_version(&name, version).await {
        Ok(Some(p)) => page(
            &format!("{name} v{version}"),
            &u,
            &format!(
                "<p>target {} · <code>{}</code> · by {} at {}</p><pre id=\"source\">{}</pre>",
                esc(&p.target),
                esc(&p.policy_id),
                esc(&p.created_by),
                esc(&fmt_ms(p.created_at)),
                esc(&p.source)
            ),
        ),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            page("No such version", &u, "<p>No such policy version.</p>"),
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct RollbackForm {
    version: i64,
}

async fn rollback_submit(
    State(app): State<App>,
    Extension(u): Extension<ConsoleUser>,
    Path(name): Path<String>,
    Form(f): Form<RollbackForm>,
) -> Response {
    match rollback(&app, &name, f.version, &u.session.name).await {
        Ok(row) => Redirect::to(&format!(
            "/policies/{}?rolled_back={}",
            enc(&name),
            row.version
        ))
        .into_response(),
        Err(e) => forbidden_or(e),
    }
}

/// An API error shown as a page with the same status and message.
fn forbidden_or(e: crate::api::ApiError) -> Response {
    (
        e.status,
        Html(page_html("Error", None, &notice("error", &e.message))),
    )
        .into_response()
}

// ---- audit --------------------------------------------------------------------------

fn field(v: &serde_json::Value, k: &str) -> String {
    match v.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn audit_table(bodies: &[String]) -> String {
    let rows: Vec<Vec<String>> = bodies
        .iter()
        .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .map(|v| {
            let decision = field(&v, "decision");
            vec![
                esc(&field(&v, "time")),
                esc(&field(&v, "machine")),
                format!(
                    "<a href=\"/audit?session={}\">{}</a>",
                    enc(&field(&v, "session")),
                    esc(&field(&v, "session"))
                ),
                esc(&field(&v, "surface")),
                esc(&field(&v, "action")),
                format!(
                    "<span class=\"target\">{}</span>",
                    esc(&field(&v, "target"))
                ),
                format!(
                    "<span class=\"{}\">{}</span>",
                    if decision == "deny" { "deny" } else { "allow" },
                    esc(&decision)
                ),
                esc(&field(&v, "rule")),
                esc(&field(&v, "reason")),
                esc(&field(&v, "policy")),
            ]
        })
        .collect();
    table(
        &[
            "time", "machine", "session", "surface", "action", "target", "decision", "rule",
            "reason", "policy",
        ],
        &rows,
        "events",
    )
}

fn query_string(p: &AuditParams) -> String {
    let pairs = [
        ("surface", &p.surface),
        ("decision", &p.decision),
        ("session", &p.session),
        ("machine", &p.machine),
        ("target", &p.target),
        ("since", &p.since),
        ("until", &p.until),
    ];
    pairs
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .filter(|s| !s.is_empty())
                .map(|v| format!("{k}={}", enc(v)))
        })
        .collect::<Vec<_>>()
        .join("&")
}

async fn audit(
    State(app): State<App>,
    Extension(u): Extension<ConsoleUser>,
    Query(p): Query<AuditParams>,
) -> Response {
    let input = |name: &str, label: &str, v: &Option<String>, hint: &str| {
        format!(
            "<label>{label} <input name=\"{name}\" id=\"f-{name}\" value=\"{}\" \
             placeholder=\"{hint}\"></label>",
            opt(v).replace('—', "")
        )
    };
    let mut body = format!(
        "<form method=\"get\" action=\"/audit\" id=\"filters\">{}{}{}{}{}{}{}\
         <label>limit <input name=\"limit\" value=\"{}\" size=\"5\"></label>\
         <button id=\"search\">Search</button></form>",
        input("surface", "surface", &p.surface, "network, filesystem, …"),
        input("decision", "decision", &p.decision, "allow or deny"),
        input("session", "session", &p.session, ""),
        input("machine", "machine", &p.machine, ""),
        input("target", "target", &p.target, "exact"),
        input("since", "since", &p.since, "10m, 2h, 2026-01-01"),
        input("until", "until", &p.until, ""),
        p.limit.unwrap_or(100),
    );
    let q = match audit_query_of(&p, 100) {
        Ok(q) => q,
        Err(m) => {
            body.push_str(&notice("error", &m));
            return (StatusCode::BAD_REQUEST, page("Audit", &u, &body)).into_response();
        }
    };
    let bodies = match app.store.query_events(&q).await {
        Ok(b) => b,
        Err(e) => return internal(e),
    };
    let _ = write!(
        body,
        "<p>{} events, newest first · <a id=\"export\" href=\"/audit/export?{}\">export \
         as JSON lines</a></p>",
        bodies.len(),
        esc(&query_string(&p))
    );
    body.push_str(&audit_table(&bodies));
    page("Audit", &u, &body)
}

async fn audit_export(State(app): State<App>, Query(p): Query<AuditParams>) -> Response {
    let mut q = match audit_query_of(&p, 1_000_000) {
        Ok(q) => q,
        Err(m) => return (StatusCode::BAD_REQUEST, m).into_response(),
    };
    q.ascending = true;
    match app.store.query_events(&q).await {
        Ok(bodies) => {
            let mut out = String::new();
            for b in bodies {
                out.push_str(&b);
                out.push('\n');
            }
            (
                [
                    (header::CONTENT_TYPE, "application/x-ndjson"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"audit.jsonl\"",
                    ),
                ],
                out,
            )
                .into_response()
        }
        Err(e) => internal(e),
    }
}

// ---- secrets ------------------------------------------------------------------------

async fn secrets(State(app): State<App>, Extension(u): Extension<ConsoleUser>) -> Response {
    secrets_page(&app, &u, "").await
}

async fn secrets_page(app: &App, u: &ConsoleUser, message: &str) -> Response {
    let rows = match app.store.list_secrets().await {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            let mut action = String::new();
            if u.admin() {
                action = format!(
                    "{}<button>Delete</button></form>",
                    form_open(
                        &format!("/secrets/{}/delete", enc(&s.name)),
                        &u.session.csrf,
                        "inline"
                    )
                );
            }
            vec![
                format!("<code>vault:{}</code>", esc(&s.name)),
                esc(&fmt_ms(s.updated_at)),
                esc(&s.updated_by),
                action,
            ]
        })
        .collect();
    let mut body = String::from(message);
    body.push_str("<p>Values are encrypted at rest and never shown.</p>");
    body.push_str(&table(&["name", "updated", "by", ""], &rows, "secrets"));
    if u.admin() {
        let _ = write!(
            body,
            "<h2>Set a secret</h2>{}<label>Name <input name=\"name\" id=\"secret-name\" \
             required></label><label>Value <input type=\"password\" name=\"value\" \
             id=\"secret-value\" autocomplete=\"off\" required></label>\
             <button id=\"secret-set\">Save</button></form>",
            form_open("/secrets", &u.session.csrf, "")
        );
    }
    page("Secrets", u, &body)
}

#[derive(Deserialize)]
struct SecretForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: String,
}

async fn secret_set(
    State(app): State<App>,
    Extension(u): Extension<ConsoleUser>,
    Form(f): Form<SecretForm>,
) -> Response {
    let name = f.name.trim().to_string();
    let value = zeroize::Zeroizing::new(f.value);
    match store_secret(&app, &name, &value, &u.session.name).await {
        Ok(()) => secrets_page(&app, &u, &notice("ok", &format!("Saved vault:{name}."))).await,
        Err(e) => secrets_page(&app, &u, &notice("error", &e.message)).await,
    }
}

async fn secret_delete(
    State(app): State<App>,
    Extension(u): Extension<ConsoleUser>,
    Path(name): Path<String>,
) -> Response {
    match app.store.delete_secret(&name).await {
        Ok(true) => secrets_page(&app, &u, &notice("ok", &format!("Deleted vault:{name}."))).await,
        Ok(false) => secrets_page(&app, &u, &notice("error", "no such secret")).await,
        Err(e) => internal(e),
    }
}

// ---- tokens -------------------------------------------------------------------------

async fn tokens(State(app): State<App>, Extension(u): Extension<ConsoleUser>) -> Response {
    tokens_page(&app, &u, "").await
}

async fn tokens_page(app: &App, u: &ConsoleUser, message: &str) -> Response {
    let rows = match app.store.list_tokens().await {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|t| {
            let state = match (&t.used_by, t.expires_at) {
                (Some(m), _) => format!("used by {m}"),
                (None, Some(e)) if e <= now_ms() => "expired".into(),
                _ => "valid".into(),
            };
            vec![
                format!("<code>{}</code>", esc(&t.id)),
                esc(&t.role),
                esc(&t.name),
                esc(&labels_text(&t.labels)),
                esc(&fmt_ms(t.created_at)),
                esc(&t.expires_at.map(fmt_ms).unwrap_or_else(|| "never".into())),
                esc(&state),
                format!(
                    "{}<button>Revoke</button></form>",
                    form_open(
                        &format!("/tokens/{}/delete", enc(&t.id)),
                        &u.session.csrf,
                        "inline"
                    )
                ),
            ]
        })
        .collect();
    let mut body = String::from(message);
    let _ = write!(
        body,
        "<h2>Create a token</h2>{}<label>Role <select name=\"role\" id=\"role\">\
         <option value=\"enroll\">enroll (one-time, for a machine)</option>\
         <option value=\"auditor\">auditor (read-only)</option>\
         <option value=\"admin\">admin</option></select></label>\
         <label>Labels <input name=\"labels\" id=\"labels\" placeholder=\"team=ml, env=prod\">\
         </label><label>Valid for hours <input name=\"ttl_hours\" size=\"4\" \
         placeholder=\"24\"></label><button id=\"token-create\">Create</button></form>",
        form_open("/tokens", &u.session.csrf, "")
    );
    body.push_str(&table(
        &[
            "id", "role", "name", "labels", "created", "expires", "state", "",
        ],
        &rows,
        "tokens",
    ));
    page("Tokens", u, &body)
}

#[derive(Deserialize)]
struct TokenForm {
    #[serde(default)]
    role: String,
    #[serde(default)]
    labels: String,
    #[serde(default)]
    ttl_hours: String,
}

/// Parse `k=v, k2=v2`.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("label {part:?}: expected KEY=VALUE"))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

async fn token_create(
    State(app): State<App>,
    Extension(u): Extension<ConsoleUser>,
    Form(f): Form<TokenForm>,
) -> Response {
    let labels = match parse_labels(&f.labels) {
        Ok(l) => l,
        Err(m) => return tokens_page(&app, &u, &notice("error", &m)).await,
    };
    let ttl_secs = match f.ttl_hours.trim() {
        "" => None,
        h => match h.parse::<i64>() {
            Ok(h) if h > 0 => Some(h.saturating_mul(3600)),
            _ => {
                return tokens_page(
                    &app,
                    &u,
                    &notice("error", "hours must be a positive whole number"),
                )
                .await;
            }
        },
    };
    let req = TokenRequest {
        role: Some(f.role),
        name: None,
        labels,
        ttl_secs,
    };
    match make_token(&app, &req, &u.session.name).await {
        Ok(t) => {
            let msg = format!(
                "<p class=\"ok\">Created {} token <code>{}</code>. Copy it now; it is not shown \
                 again:</p><p class=\"token\" id=\"new-token\">{}</p>",
                esc(&t.role),
                esc(&t.id),
                esc(&t.token)
            );
            tokens_page(&app, &u, &msg).await
        }
        Err(e) => tokens_page(&app, &u, &notice("error", &e.message)).await,
    }
}

async fn token_delete(
    State(app): State<App>,
    Extension(u): Extension<ConsoleUser>,
    Path(id): Path<String>,
) -> Response {
    match app.store.delete_token(&id).await {
        Ok(true) => tokens_page(&app, &u, &notice("ok", &format!("Revoked {id}."))).await,
        Ok(false) => tokens_page(&app, &u, &notice("error", "no such token")).await,
        Err(e) => internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_cookies() {
        assert_eq!(
            esc("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; warden_session=xyz"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), None);
        assert!(ct_eq("abc", "abc") && !ct_eq("abc", "abd") && !ct_eq("ab", "abc"));
        assert_eq!(
            parse_labels("team=ml, env = prod")
                .unwrap()
                .get("env")
                .map(String::as_str),
            Some("prod")
        );
        assert!(parse_labels("oops").is_err());
    }

    #[test]
    fn origin_must_match_host() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h));
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7070"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7070"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }
}
