//! The OpenAPI 3.1 document, generated from [`crate::api::routes`] so that every route
//! is documented and every documented route exists.

use crate::api::route_specs;
use crate::auth::Access;
use serde_json::{Map, Value, json};

fn params_of(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
        })
        .collect()
}

/// The document served at `/api/v1/openapi.json`.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for r in route_specs() {
        let security = match r.access {
            Access::Public => json!([]),
            Access::Read | Access::Admin => json!([{"bearer": []}]),
            Access::Machine => json!([{"machineSignature": []}]),
        };
        let role = match r.access {
            Access::Public => "public",
            Access::Read => "auditor or admin",
            Access::Admin => "admin",
            Access::Machine => "enrolled machine (signed request)",
        };
        let op = json!({
            "summary": r.summary,
            "description": format!("Access: {role}."),
            "operationId": format!("{} {}", r.method, r.path),
            "parameters": params_of(r.path),
            "security": security,
            "x-warden-access": r.access,
            "responses": {
                "200": {"description": "Success."},
                "401": {"description": "Missing or invalid credentials."},
                "403": {"description": "Authenticated, but not allowed."},
            },
        });
        let entry = paths
            .entry(r.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(r.method.to_ascii_lowercase(), op);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Warden control plane",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Policies, machines, sessions, audit, secrets and tokens. \
                            Admin and auditor calls take `Authorization: Bearer TOKEN`; \
                            node calls are signed with the machine key (headers \
                            x-warden-machine, x-warden-timestamp, x-warden-nonce, \
                            x-warden-signature).",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "machineSignature": {"type": "apiKey", "in": "header", "name": "x-warden-signature"},
            }
        },
        "paths": paths,
    })
}
