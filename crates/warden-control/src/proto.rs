//! The wire protocol between a node (`warden agent`) and the server: request signing
//! with the machine key, signed policy bundles, and the JSON bodies of the node API.
//!
//! Both sides use this module, so a change here is a protocol change.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Header naming the machine that signed the request.
pub const HDR_MACHINE: &str = "x-warden-machine";
/// Header with the request time, Unix seconds.
pub const HDR_TIMESTAMP: &str = "x-warden-timestamp";
/// Header with a random value unique to this request (replay protection).
pub const HDR_NONCE: &str = "x-warden-nonce";
/// Header with the base64 ed25519 signature over [`signing_input`].
pub const HDR_SIGNATURE: &str = "x-warden-signature";
/// A signed request older or newer than this (seconds) is rejected.
pub const MAX_SKEW_SECS: i64 = 300;

/// Errors of the protocol layer. None of them carries key material.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// A key or signature was not valid base64 of the right length.
    #[error("malformed {what}: expected base64 of {len} bytes")]
    Malformed { what: &'static str, len: usize },
    /// The signature does not verify under the expected key.
    #[error("signature does not verify under the pinned server key")]
    BadSignature,
    /// The bundle payload is not the JSON this version understands.
    #[error("bundle payload is not valid: {0}")]
    Payload(String),
}

/// The exact bytes a node signs for one request.
pub fn signing_input(
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let body_hash = hex::encode(Sha256::digest(body));
    format!(
        "warden-request-v1\n{}\n{path_and_query}\n{timestamp}\n{nonce}\n{body_hash}",
        method.to_ascii_uppercase()
    )
    .into_bytes()
}

/// Decode a base64 ed25519 public key.
pub fn decode_public_key(b64: &str) -> Result<VerifyingKey, ProtoError> {
    let bad = || ProtoError::Malformed {
        what: "public key",
        len: 32,
    };
    let bytes = B64.decode(b64.trim()).map_err(|_| bad())?;
    let arr: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
    VerifyingKey::from_bytes(&arr).map_err(|_| bad())
}

/// Encode a public key as base64.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// Decode a base64 signature.
pub fn decode_signature(b64: &str) -> Result<Signature, ProtoError> {
    let bad = || ProtoError::Malformed {
        what: "signature",
        len: 64,
    };
    let bytes = B64.decode(b64.trim()).map_err(|_| bad())?;
    let arr: [u8; 64] = bytes.try_into().map_err(|_| bad())?;
    Ok(Signature::from_bytes(&arr))
}

/// The headers that authenticate one node request.
#[derive(Debug, Clone)]
pub struct SignedHeaders {
    pub machine: String,
    pub timestamp: i64,
    pub nonce: String,
    pub signature: String,
}

impl SignedHeaders {
    /// As `(name, value)` pairs.
    pub fn pairs(&self) -> [(&'static str, String); 4] {
        [
            (HDR_MACHINE, self.machine.clone()),
            (HDR_TIMESTAMP, self.timestamp.to_string()),
            (HDR_NONCE, self.nonce.clone()),
            (HDR_SIGNATURE, self.signature.clone()),
        ]
    }
}

/// Sign one request with the machine key.
pub fn sign_request(
    key: &SigningKey,
    machine: &str,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now_unix: i64,
    nonce: &str,
) -> SignedHeaders {
    let input = signing_input(method, path_and_query, now_unix, nonce, body);
    SignedHeaders {
        machine: machine.to_string(),
        timestamp: now_unix,
        nonce: nonce.to_string(),
        signature: B64.encode(key.sign(&input).to_bytes()),
    }
}

/// Verify a request signature (the caller checks skew and replays).
pub fn verify_request(
    key: &VerifyingKey,
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    signature_b64: &str,
    body: &[u8],
) -> Result<(), ProtoError> {
    let sig = decode_signature(signature_b64)?;
    let input = signing_input(method, path_and_query, timestamp, nonce, body);
    key.verify_strict(&input, &sig)
        .map_err(|_| ProtoError::BadSignature)
}

/// `POST /api/v1/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The one-time enrollment token.
    pub token: String,
    /// The node's ed25519 public key, base64.
    pub public_key: String,
    /// The node's host name, for people reading the machine list.
    #[serde(default)]
    pub hostname: String,
}

/// The answer to an enrollment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub machine_id: String,
    /// The server's bundle-signing key, base64: the node pins it.
    pub server_public_key: String,
    pub labels: BTreeMap<String, String>,
}

/// The policy a bundle carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundlePolicy {
    pub name: String,
    /// Version of this policy name (1, 2, ...).
    pub version: i64,
    /// `name@digest` as warden-policy computes it.
    pub id: String,
    /// The TOML source, exactly as pushed.
    pub source: String,
    /// `all`, `label:K=V` or `machine:ID`.
    pub target: String,
    pub created_by: String,
    pub created_at: String,
}

/// What a bundle says. Signed as the exact JSON bytes in [`SignedBundle::payload`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundlePayload {
    pub format: u32,
    /// The machine this bundle was issued to; a node rejects a bundle for another.
    pub machine: String,
    /// The server's policy serial when this bundle was issued. Only grows; a node
    /// rejects a bundle older than the one it holds (no rollback by replay).
    pub serial: i64,
    pub issued_at: String,
    /// The effective central policy, or none when no policy targets this machine.
    pub policy: Option<BundlePolicy>,
}

/// A bundle as it travels and as the node keeps it on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedBundle {
    /// Base64 of the JSON payload bytes that were signed.
    pub payload: String,
    /// Base64 ed25519 signature over the decoded payload bytes.
    pub signature: String,
}

impl SignedBundle {
    /// Serialize and sign a payload.
    pub fn sign(payload: &BundlePayload, key: &SigningKey) -> Result<SignedBundle, ProtoError> {
        let bytes = serde_json::to_vec(payload).map_err(|e| ProtoError::Payload(e.to_string()))?;
        let sig = key.sign(&bytes);
        Ok(SignedBundle {
            payload: B64.encode(&bytes),
            signature: B64.encode(sig.to_bytes()),
        })
    }

    /// Check the signature against the pinned key and decode the payload.
    pub fn verify(&self, key: &VerifyingKey) -> Result<BundlePayload, ProtoError> {
        let bytes = B64
            .decode(self.payload.trim())
            .map_err(|_| ProtoError::Malformed {
                what: "bundle payload",
                len: 0,
            })?;
        let sig = decode_signature(&self.signature)?;
        key.verify_strict(&bytes, &sig)
            .map_err(|_| ProtoError::BadSignature)?;
        serde_json::from_slice(&bytes).map_err(|e| ProtoError::Payload(e.to_string()))
    }
}

/// `POST /api/v1/node/audit`: a batch of spooled events, each one JSON line of SPEC §5.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditBatch {
    pub events: Vec<serde_json::Value>,
}

/// The server's acknowledgement: every event of the batch is stored (now or before).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditAck {
    pub received: u64,
    /// Newly stored; `received - stored` were already there (a retried batch).
    pub stored: u64,
}

/// `POST /api/v1/node/leases`: lease a `vault:NAME` credential for one session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub session: String,
    pub name: String,
}

/// A leased secret. The only response in the whole API that carries a secret value,
/// and only to the machine whose bundle binds that credential.
#[derive(Serialize, Deserialize)]
pub struct LeaseResponse {
    pub lease_id: String,
    pub name: String,
    pub session: String,
    pub value: String,
}

impl std::fmt::Debug for LeaseResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseResponse")
            .field("lease_id", &self.lease_id)
            .field("name", &self.name)
            .field("session", &self.session)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// One message on the node stream (`GET /api/v1/node/stream`, server-sent events
/// named `bundle`): sent when the stream opens and whenever the policy serial changes.
/// It carries the machine's signed bundle and its ETag, which the node verifies like a
/// fetched one; a notice without a bundle means "fetch it" (`GET /api/v1/node/bundle`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamNotice {
    pub serial: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<SignedBundle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}
