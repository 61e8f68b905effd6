//! JSON-RPC 2.0 envelopes at the message level. The gateway forwards bodies as
//! `serde_json::Value` so fields it does not know (newer protocol revisions, `_meta`)
//! pass through untouched; see docs/decisions/0003-mcp-gateway.md.

use rmcp::model::ErrorCode;
use serde_json::{Value, json};

/// Parse error (-32700).
pub const PARSE_ERROR: i32 = ErrorCode::PARSE_ERROR.0;
/// Invalid request (-32600).
pub const INVALID_REQUEST: i32 = ErrorCode::INVALID_REQUEST.0;
/// Method not found (-32601).
pub const METHOD_NOT_FOUND: i32 = ErrorCode::METHOD_NOT_FOUND.0;
/// Invalid params (-32602).
pub const INVALID_PARAMS: i32 = ErrorCode::INVALID_PARAMS.0;
/// Internal error (-32603).
pub const INTERNAL_ERROR: i32 = ErrorCode::INTERNAL_ERROR.0;
/// A call refused by Warden's policy, pins or secret scanner.
pub const POLICY_DENIED: i32 = -32010;
/// The upstream server failed: it exited, timed out or is not running.
pub const UPSTREAM_FAILED: i32 = -32011;
/// Warden could not write the audit record of a call: refused (or its result withheld).
pub const AUDIT_FAILED: i32 = -32012;

/// What a JSON-RPC message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
    Invalid,
}

/// Classify one message (not a batch).
pub fn kind(msg: &Value) -> Kind {
    let Some(obj) = msg.as_object() else {
        return Kind::Invalid;
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Kind::Invalid;
    }
    match (obj.get("method"), obj.get("id")) {
        (Some(Value::String(_)), None) => Kind::Notification,
        (Some(Value::String(_)), Some(id)) if valid_id(id) => Kind::Request,
        (None, Some(id))
            if (valid_id(id) || id.is_null())
                && (obj.contains_key("result") ^ obj.contains_key("error")) =>
        {
            Kind::Response
        }
        _ => Kind::Invalid,
    }
}

fn valid_id(id: &Value) -> bool {
    id.is_string() || id.as_i64().is_some() || id.as_u64().is_some()
}

/// The method of a request or notification.
pub fn method(msg: &Value) -> &str {
    msg.get("method").and_then(Value::as_str).unwrap_or("")
}

/// A success response.
pub fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error response.
pub fn error(id: Value, code: i32, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

/// An error response with `data`.
pub fn error_data(id: Value, code: i32, message: impl Into<String>, data: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into(), "data": data}})
}

/// A request.
pub fn request(id: Value, method: &str, params: Option<Value>) -> Value {
    let mut v = json!({"jsonrpc": "2.0", "id": id, "method": method});
    if let (Some(p), Some(obj)) = (params, v.as_object_mut()) {
        obj.insert("params".into(), p);
    }
    v
}

/// A notification.
pub fn notification(method: &str, params: Option<Value>) -> Value {
    let mut v = json!({"jsonrpc": "2.0", "method": method});
    if let (Some(p), Some(obj)) = (params, v.as_object_mut()) {
        obj.insert("params".into(), p);
    }
    v
}

/// Protocol revisions this gateway speaks on either side (the `initialize` era).
pub fn supported_versions() -> impl Iterator<Item = &'static str> {
    rmcp::model::ProtocolVersion::KNOWN_VERSIONS
        .iter()
        .filter(|v| v.has_initialize())
        .map(|v| v.as_str())
}

/// The newest revision with an `initialize` handshake: what the gateway offers upstream
/// and answers with when a client asks for a revision it does not know.
pub fn latest_version() -> &'static str {
    rmcp::model::ProtocolVersion::LATEST_WITH_INITIALIZE.as_str()
}

/// Pick the revision to answer a client's `initialize` with (spec: the requested one
/// when supported, else the latest supported).
pub fn negotiate(requested: Option<&str>) -> &'static str {
    match requested {
        Some(r) => supported_versions()
            .find(|v| *v == r)
            .unwrap_or_else(latest_version),
        None => latest_version(),
    }
}

/// Whether a negotiated revision allows JSON-RPC batches. Batching was added in
/// 2025-03-26 and removed again in 2025-06-18; 2024-11-05 inherits JSON-RPC 2.0's.
pub fn batches_allowed(version: &str) -> bool {
    version <= "2025-03-26"
}
