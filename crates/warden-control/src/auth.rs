//! Who is calling: bearer tokens (roles `admin`, `auditor`), machines (ed25519-signed
//! requests) and nobody. Every route declares an [`Access`] and this module's middleware
//! enforces it before the handler runs.

use crate::crypto::hash_token;
use crate::proto::{self, HDR_MACHINE, HDR_NONCE, HDR_SIGNATURE, HDR_TIMESTAMP, MAX_SKEW_SECS};
use crate::server::App;
use crate::store::{MachineRow, now_ms};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone (health, the OpenAPI document, enrollment — which carries its own token).
    Public,
    /// An `auditor` or `admin` token: read-only, never a secret value.
    Read,
    /// An `admin` token.
    Admin,
    /// A request signed by an enrolled machine's key.
    Machine,
}

/// A bearer-token caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub role: String,
    pub name: String,
}

/// A machine caller, verified.
#[derive(Debug, Clone)]
pub struct MachineCaller(pub MachineRow);

pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Look up a bearer token; `Ok(None)` when it is unknown or expired.
pub(crate) async fn caller_for(app: &App, token: &str) -> Result<Option<Caller>, Response> {
    let row = app
        .store
        .token_by_hash(&hash_token(token))
        .await
        .map_err(|e| {
            tracing::error!("token lookup failed: {e}");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        })?;
    Ok(row
        .filter(|t| t.role == "admin" || t.role == "auditor")
        .filter(|t| t.expires_at.is_none_or(|e| e > now_ms()))
        .map(|t| Caller {
            token_id: t.id,
            role: t.role,
            name: t.name,
        }))
}

/// The middleware: enforce `access` for one route.
pub async fn enforce(State(app): State<App>, access: Access, req: Request, next: Next) -> Response {
    match access {
        Access::Public => next.run(req).await,
        Access::Read | Access::Admin => {
            let Some(token) = bearer(req.headers()).map(str::to_string) else {
                return unauthorized("missing bearer token");
            };
            let caller = match caller_for(&app, &token).await {
                Ok(Some(c)) => c,
                Ok(None) => return unauthorized("invalid or expired token"),
                Err(resp) => return resp,
            };
            if access == Access::Admin && caller.role != "admin" {
                return json_error(StatusCode::FORBIDDEN, "this needs an admin token");
            }
            let mut req = req;
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Access::Machine => match verify_machine(&app, req).await {
            Ok(req) => next.run(req).await,
            Err(resp) => resp,
        },
    }
}

fn unauthorized(message: &str) -> Response {
    let mut r = json_error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    r
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Verify a machine-signed request and attach the [`MachineCaller`].
async fn verify_machine(app: &App, req: Request) -> Result<Request, Response> {
    let (parts, body) = req.into_parts();
    let h = &parts.headers;
    let (Some(machine), Some(ts), Some(nonce), Some(sig)) = (
        header(h, HDR_MACHINE),
        header(h, HDR_TIMESTAMP),
        header(h, HDR_NONCE),
        header(h, HDR_SIGNATURE),
    ) else {
        return Err(unauthorized("missing machine signature headers"));
    };
    let Ok(ts) = ts.parse::<i64>() else {
        return Err(unauthorized("bad timestamp"));
    };
    let now = now_ms() / 1000;
    if (now - ts).abs() > MAX_SKEW_SECS {
        return Err(unauthorized(
            "request time is more than 5 minutes off the server's clock",
        ));
    }
    if nonce.len() < 16 || nonce.len() > 128 {
        return Err(unauthorized("bad nonce"));
    }
    let row = match app.store.machine(machine).await {
        Ok(Some(m)) if !m.revoked => m,
        Ok(_) => return Err(unauthorized("unknown or revoked machine")),
        Err(e) => {
            tracing::error!("machine lookup failed: {e}");
            return Err(json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
            ));
        }
    };
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .map_err(|_| json_error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"))?;
    let key = proto::decode_public_key(&row.public_key)
        .map_err(|_| json_error(StatusCode::INTERNAL_SERVER_ERROR, "stored key is corrupt"))?;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if proto::verify_request(&key, parts.method.as_str(), path, ts, nonce, sig, &body).is_err() {
        return Err(unauthorized("machine signature does not verify"));
    }
    // A replayed request is rejected: the nonce is remembered for the skew window.
    {
        let Ok(mut seen) = app.nonces.lock() else {
            return Err(json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
            ));
        };
        if seen.len() > 200_000 {
            seen.retain(|_, exp| *exp > now);
        }
        let key = format!("{machine}:{nonce}");
        if seen.contains_key(&key) {
            return Err(unauthorized("replayed request"));
        }
        seen.insert(key, now + 2 * MAX_SKEW_SECS + 1);
    }
    if let Ok(mut seen) = app.seen.lock() {
        let entry = seen.entry(row.id.clone()).or_insert((0, None));
        entry.0 = now_ms();
    }
    let mut req = Request::from_parts(parts, Body::from(body));
    req.extensions_mut().insert(MachineCaller(row));
    Ok(req)
}
