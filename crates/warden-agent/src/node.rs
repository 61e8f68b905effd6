//! The enrolled node: identity, bundle sync, the daemon loop and status.

use crate::error::AgentError;
use crate::spool::{self, Cursor, UploadReport};
use ed25519_dalek::{SigningKey, VerifyingKey};
use http_body_util::BodyExt;
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use warden_control::client::{Auth, Client, SseParser};
use warden_control::proto::{
    AuditAck, AuditBatch, BundlePayload, EnrollRequest, EnrollResponse, LeaseRequest,
    LeaseResponse, SignedBundle, StreamNotice, decode_public_key, encode_public_key,
};
use zeroize::Zeroizing;

/// What enrollment left on disk (`agent/identity.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub server: String,
    pub machine_id: String,
    /// The pinned bundle-signing key of the server, base64.
    pub server_public_key: String,
    pub public_key: String,
    pub labels: BTreeMap<String, String>,
    pub enrolled_at: String,
}

/// The bundle kept on disk, with the ETag it was served under.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredBundle {
    etag: Option<String>,
    received_at: String,
    bundle: SignedBundle,
}

/// The central policy in force on this machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnrolledPolicy {
    pub name: String,
    pub version: i64,
    /// `name@digest`.
    pub id: String,
    pub source: String,
    pub target: String,
    pub serial: i64,
    pub server: String,
    pub received_at: String,
}

impl EnrolledPolicy {
    /// Where it came from, for `warden status` and audit: `SERVER name@vN (target …)`.
    pub fn origin(&self) -> String {
        format!(
            "control plane {} — {}@v{} (target {}, serial {})",
            self.server, self.name, self.version, self.target, self.serial
        )
    }
}

/// What `warden status` reports about the policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PolicyInForce {
    /// Not enrolled: the local policy (or the built-in preset) applies.
    Standalone,
    /// Enrolled, with a verified bundle that carries a policy.
    Central(EnrolledPolicy),
    /// Enrolled, verified bundle, but no policy targets this machine: fail closed.
    Unassigned { serial: i64 },
    /// Enrolled and no verified bundle: fail closed.
    None { reason: String },
}

/// `warden status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub home: PathBuf,
    pub identity: Option<Identity>,
    pub policy: PolicyInForce,
    pub spool_pending_bytes: u64,
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncOutcome {
    /// The server said the bundle we hold is current.
    NotModified,
    /// A new bundle was verified and stored.
    Updated(Box<BundlePayload>),
}

/// How `warden agent` runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// How often the spool is checked for new events.
    pub upload_interval: Duration,
    /// Most events per upload.
    pub batch_size: usize,
    /// Re-fetch the bundle this often even without a notice.
    pub resync_interval: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            upload_interval: Duration::from_millis(500),
            batch_size: 500,
            resync_interval: Duration::from_secs(60),
        }
    }
}

/// A node rooted at one `WARDEN_HOME`.
#[derive(Debug, Clone)]
pub struct Node {
    home: PathBuf,
    spool: PathBuf,
}

/// Write `bytes` to `path` atomically (temp file, fsync, rename, fsync the directory).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AgentError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| AgentError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| AgentError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| AgentError::io(path, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Node {
    /// A node whose state lives in `home`; its spool is `home/audit.jsonl`.
    pub fn new(home: &Path) -> Node {
        Node {
            home: home.to_path_buf(),
            spool: home.join("audit.jsonl"),
        }
    }

    /// Use another spool file.
    pub fn with_spool(mut self, spool: &Path) -> Node {
        self.spool = spool.to_path_buf();
        self
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    fn dir(&self) -> PathBuf {
        self.home.join("agent")
    }
    fn identity_path(&self) -> PathBuf {
        self.dir().join("identity.json")
    }
    fn key_path(&self) -> PathBuf {
        self.dir().join("machine.key")
    }
    /// Where the last good bundle is kept.
    pub fn bundle_path(&self) -> PathBuf {
        self.dir().join("bundle.json")
    }
    /// The CA the server's TLS certificate was checked against at enrollment, when
    /// `WARDEN_SERVER_CA` named one: kept so that `warden agent` trusts the same CA.
    fn server_ca_path(&self) -> PathBuf {
        self.dir().join("server-ca.pem")
    }
    fn cursor_path(&self) -> PathBuf {
        self.dir().join("audit.cursor")
    }

    /// The enrollment record, if enrolled.
    pub fn identity(&self) -> Result<Option<Identity>, AgentError> {
        let p = self.identity_path();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| AgentError::corrupt(&p, format!("not an identity file: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::io(&p, e)),
        }
    }

    fn require_identity(&self) -> Result<Identity, AgentError> {
        self.identity()?
            .ok_or_else(|| AgentError::NotEnrolled(self.identity_path()))
    }

    fn machine_key(&self) -> Result<SigningKey, AgentError> {
        let p = self.key_path();
        let text = Zeroizing::new(std::fs::read_to_string(&p).map_err(|e| AgentError::io(&p, e))?);
        let bytes = Zeroizing::new(
            hex::decode(text.trim()).map_err(|_| AgentError::corrupt(&p, "not a hex key"))?,
        );
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| AgentError::corrupt(&p, "not a 32-byte key"))?;
        Ok(SigningKey::from_bytes(&arr))
    }

    fn pinned_key(&self, id: &Identity) -> Result<VerifyingKey, AgentError> {
        decode_public_key(&id.server_public_key)
            .map_err(|e| AgentError::corrupt(&self.identity_path(), e.to_string()))
    }

    /// A client that signs every request with this machine's key.
    pub fn client(&self) -> Result<Client, AgentError> {
        let id = self.require_identity()?;
        let key = self.machine_key()?;
        let ca = self.server_ca_path();
        Ok(Client::with_ca(
            &id.server,
            Auth::Machine {
                id: id.machine_id,
                key: Box::new(key),
            },
            ca.exists().then_some(ca.as_path()),
        )?)
    }

    /// Enroll: make a key pair, present the token and the public key, pin the
    /// server's key. The private key never leaves this machine.
    pub async fn enroll(
        &self,
        server: &str,
        token: &str,
        hostname: &str,
    ) -> Result<Identity, AgentError> {
        if let Some(id) = self.identity()? {
            return Err(AgentError::AlreadyEnrolled(
                id.machine_id,
                self.identity_path(),
            ));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng
            .try_fill_bytes(&mut seed[..])
            .map_err(|e| AgentError::io(&self.key_path(), std::io::Error::other(e.to_string())))?;
        let key = SigningKey::from_bytes(&seed);
        let public_key = encode_public_key(&key.verifying_key());
        let client = Client::new(server, Auth::None)?;
        let answer = client
            .post_json(
                "/api/v1/enroll",
                &EnrollRequest {
                    token: token.trim().to_string(),
                    public_key: public_key.clone(),
                    hostname: hostname.to_string(),
                },
            )
            .await?;
        let resp: EnrollResponse = answer.json()?;
        decode_public_key(&resp.server_public_key)
            .map_err(|e| AgentError::Rejected(format!("server key: {e}")))?;
        let identity = Identity {
            server: client.base().to_string(),
            machine_id: resp.machine_id.clone(),
            server_public_key: resp.server_public_key,
            public_key,
            labels: resp.labels,
            enrolled_at: now_rfc3339(),
        };
        if let Some(ca) = std::env::var_os(warden_control::tls::SERVER_CA_ENV)
            .filter(|p| !p.is_empty() && server.trim().starts_with("https://"))
        {
            let pem = std::fs::read(&ca).map_err(|e| AgentError::io(Path::new(&ca), e))?;
            write_atomic(&self.server_ca_path(), &pem, 0o644)?;
        }
        let seed_hex = Zeroizing::new(hex::encode(&seed[..]));
        write_atomic(&self.key_path(), seed_hex.as_bytes(), 0o600)?;
        let json = serde_json::to_vec_pretty(&identity)
            .map_err(|e| AgentError::corrupt(&self.identity_path(), e.to_string()))?;
        write_atomic(&self.identity_path(), &json, 0o644)?;
        write_atomic(
            &self.home.join("machine-id"),
            format!("{}\n", resp.machine_id).as_bytes(),
            0o644,
        )?;
        Ok(identity)
    }

    fn load_stored(&self) -> Result<Option<StoredBundle>, AgentError> {
        let p = self.bundle_path();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| AgentError::corrupt(&p, format!("not a bundle file: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::io(&p, e)),
        }
    }

    /// The verified bundle held on disk, if any. A stored bundle that no longer
    /// verifies (edited on disk) is an error, never silently trusted.
    pub fn held_bundle(&self) -> Result<Option<BundlePayload>, AgentError> {
        let id = self.require_identity()?;
        let Some(stored) = self.load_stored()? else {
            return Ok(None);
        };
        let key = self.pinned_key(&id)?;
        let payload = stored
            .bundle
            .verify(&key)
            .map_err(|e| AgentError::corrupt(&self.bundle_path(), format!("stored bundle: {e}")))?;
        if payload.machine != id.machine_id {
            return Err(AgentError::corrupt(
                &self.bundle_path(),
                "stored bundle was issued to another machine",
            ));
        }
        Ok(Some(payload))
    }

    /// Verify a bundle and, if it is acceptable, make it the one in force.
    pub fn accept_bundle(
        &self,
        bundle: &SignedBundle,
        etag: Option<&str>,
    ) -> Result<BundlePayload, AgentError> {
        let id = self.require_identity()?;
        let key = self.pinned_key(&id)?;
        let payload = bundle
            .verify(&key)
            .map_err(|e| AgentError::Rejected(e.to_string()))?;
        if payload.machine != id.machine_id {
            return Err(AgentError::Rejected(format!(
                "issued to machine {}, not to this one ({})",
                payload.machine, id.machine_id
            )));
        }
        if payload.format != 1 {
            return Err(AgentError::Rejected(format!(
                "bundle format {} is not supported by this version",
                payload.format
            )));
        }
        if let Ok(Some(held)) = self.held_bundle()
            && payload.serial < held.serial
        {
            return Err(AgentError::Rejected(format!(
                "serial {} is older than the bundle held (serial {})",
                payload.serial, held.serial
            )));
        }
        let stored = StoredBundle {
            etag: etag.map(str::to_string),
            received_at: now_rfc3339(),
            bundle: bundle.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&stored)
            .map_err(|e| AgentError::corrupt(&self.bundle_path(), e.to_string()))?;
        write_atomic(&self.bundle_path(), &bytes, 0o644)?;
        Ok(payload)
    }

    /// Fetch the bundle (conditional on the ETag held) and accept it if it changed.
    pub async fn sync_bundle(&self, client: &Client) -> Result<SyncOutcome, AgentError> {
        // Only send our ETag if the bundle behind it still verifies.
        let etag = match (self.load_stored(), self.held_bundle()) {
            (Ok(Some(s)), Ok(Some(_))) => s.etag,
            _ => None,
        };
        let extra: Vec<(&str, &str)> = etag
            .as_deref()
            .map(|e| vec![("if-none-match", e)])
            .unwrap_or_default();
        let answer = client
            .send(
                hyper::Method::GET,
                "/api/v1/node/bundle",
                Vec::new(),
                &extra,
            )
            .await?;
        if answer.status == hyper::StatusCode::NOT_MODIFIED {
            return Ok(SyncOutcome::NotModified);
        }
        let bundle: SignedBundle = answer.json()?;
        let payload = self.accept_bundle(&bundle, answer.etag.as_deref())?;
        Ok(SyncOutcome::Updated(Box::new(payload)))
    }

    /// The central policy in force, or why there is none.
    pub fn policy_in_force(&self) -> Result<PolicyInForce, AgentError> {
        let Some(id) = self.identity()? else {
            return Ok(PolicyInForce::Standalone);
        };
        let received_at = self
            .load_stored()
            .ok()
            .flatten()
            .map(|s| s.received_at)
            .unwrap_or_default();
        Ok(match self.held_bundle() {
            Ok(Some(p)) => match p.policy {
                Some(pol) => PolicyInForce::Central(EnrolledPolicy {
                    name: pol.name,
                    version: pol.version,
                    id: pol.id,
                    source: pol.source,
                    target: pol.target,
                    serial: p.serial,
                    server: id.server,
                    received_at,
                }),
                None => PolicyInForce::Unassigned { serial: p.serial },
            },
            Ok(None) => PolicyInForce::None {
                reason: "no bundle received yet".into(),
            },
            Err(e) => PolicyInForce::None {
                reason: e.to_string(),
            },
        })
    }

    /// Everything `warden status` shows.
    pub fn status(&self) -> Result<Status, AgentError> {
        let identity = self.identity()?;
        let policy = self.policy_in_force()?;
        Ok(Status {
            home: self.home.clone(),
            identity,
            policy,
            spool_pending_bytes: self.spool_pending_bytes(),
        })
    }

    /// The audit spool this node delivers.
    pub fn spool_path(&self) -> &Path {
        &self.spool
    }

    /// Bytes of the spool not yet acknowledged by the server. A spool replaced since
    /// the cursor was written counts whole (it is delivered from its start).
    pub fn spool_pending_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(&self.spool) else {
            return 0;
        };
        let cursor = spool::load_cursor(&self.cursor_path()).unwrap_or_default();
        if meta.ino() != cursor.inode || meta.len() < cursor.offset {
            meta.len()
        } else {
            meta.len() - cursor.offset
        }
    }

    /// Deliver the spool up to its current end.
    pub async fn upload_spool(
        &self,
        client: &Client,
        batch_size: usize,
    ) -> Result<UploadReport, AgentError> {
        let cursor_path = self.cursor_path();
        let mut cursor: Cursor = spool::load_cursor(&cursor_path)?;
        let mut report = UploadReport::default();
        loop {
            let batch = spool::read_batch(&self.spool, cursor, batch_size.max(1))?;
            report.skipped += batch.skipped;
            if !batch.events.is_empty() {
                let n = batch.events.len() as u64;
                let ack: AuditAck = client
                    .post_json(
                        "/api/v1/node/audit",
                        &AuditBatch {
                            events: batch.events,
                        },
                    )
                    .await?
                    .json()?;
                if ack.received != n {
                    return Err(AgentError::Rejected(format!(
                        "server acknowledged {} of {n} events; will retry",
                        ack.received
                    )));
                }
                report.batches += 1;
                report.events += n;
                report.stored += ack.stored;
            }
            if batch.next != cursor {
                spool::save_cursor(&cursor_path, &batch.next)?;
                cursor = batch.next;
            }
            if !batch.more {
                break;
            }
        }
        let len = std::fs::metadata(&self.spool).map(|m| m.len()).unwrap_or(0);
        report.pending_bytes = len.saturating_sub(cursor.offset);
        Ok(report)
    }

    /// Lease a `vault:NAME` credential for a session. The value is returned only in
    /// memory.
    pub async fn lease(
        &self,
        client: &Client,
        session: &str,
        name: &str,
    ) -> Result<warden_secrets::Lease, AgentError> {
        let resp: LeaseResponse = client
            .post_json(
                "/api/v1/node/leases",
                &LeaseRequest {
                    session: session.to_string(),
                    name: name.to_string(),
                },
            )
            .await?
            .json()?;
        Ok(warden_secrets::Lease {
            secret: warden_secrets::Secret::from_string(resp.value),
            lease_id: warden_secrets::LeaseId(resp.lease_id),
        })
    }

    /// End a session on the server: its leases are revoked.
    pub async fn end_session(&self, client: &Client, session: &str) -> Result<(), AgentError> {
        client
            .delete(&format!(
                "/api/v1/node/leases/{}",
                warden_control::client::encode_component(session)
            ))
            .await?
            .ok()?;
        Ok(())
    }

    /// The daemon: hold the stream, sync on every notice, deliver the spool. Runs
    /// until `stop` resolves. Connection failures are retried with backoff; the last
    /// good bundle stays in force meanwhile.
    pub async fn run(
        &self,
        opts: AgentOptions,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), AgentError> {
        let client = self.client()?;
        let stream = self.stream_loop(&client, opts.resync_interval);
        let upload = self.upload_loop(&client, &opts);
        tokio::select! {
            () = stop => Ok(()),
            () = stream => Ok(()),
            () = upload => Ok(()),
        }
    }

    async fn stream_loop(&self, client: &Client, resync: Duration) {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.hold_stream(client, resync).await {
                Ok(()) => backoff = Duration::from_millis(250),
                Err(e) => {
                    tracing::warn!("control plane stream: {e}");
                    eprintln!("warden agent: {e}; retrying in {backoff:?}");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Sync once and say what changed; false when the fetch failed.
    async fn sync_and_report(&self, client: &Client) -> bool {
        match self.sync_bundle(client).await {
            Ok(SyncOutcome::Updated(p)) => report_updated(&p),
            Ok(SyncOutcome::NotModified) => {}
            Err(e) => {
                eprintln!("warden agent: bundle fetch: {e}");
                return false;
            }
        }
        true
    }

    async fn hold_stream(&self, client: &Client, resync: Duration) -> Result<(), AgentError> {
        let resp = client.open_stream("/api/v1/node/stream").await?;
        let mut body = resp.into_body();
        let mut parser = SseParser::default();
        let mut tick = tokio::time::interval(resync);
        tick.tick().await;
        // A failed fetch is retried with backoff (FETCH_RETRY_FIRST doubling up to
        // FETCH_RETRY_MAX) rather than waiting for the next notice or resync; the last
        // good bundle stays in force meanwhile.
        // The server's first notice (sent as the stream opens) carries the bundle, so
        // there is no fetch here.
        let mut retry = RetryTimer::default();
        loop {
            tokio::select! {
                frame = body.frame() => {
                    let Some(frame) = frame else { return Ok(()) };
                    let frame = frame.map_err(|e| {
                        warden_control::ControlError::Http(format!("stream: {e}"))
                    })?;
                    if let Ok(data) = frame.into_data() {
                        let notices: Vec<String> = parser
                            .feed(&data)
                            .into_iter()
                            .filter(|(name, _)| name == "bundle")
                            .map(|(_, d)| d)
                            .collect();
                        // Only the newest notice of a burst matters.
                        if let Some(d) = notices.last() {
                            let ok = match self.accept_notice(d) {
                                Some(Ok(())) => true,
                                Some(Err(e)) => {
                                    eprintln!("warden agent: bundle on the stream: {e}; fetching it");
                                    self.sync_and_report(client).await
                                }
                                None => self.sync_and_report(client).await,
                            };
                            retry.record(ok);
                        }
                    }
                }
                _ = tick.tick() => retry.record(self.sync_and_report(client).await),
                () = retry.wait() => retry.record(self.sync_and_report(client).await),
            }
        }
    }

    /// Take the bundle a stream notice carries. `None`: the notice has none (fetch it).
    /// A bundle with the ETag already held is not written again.
    fn accept_notice(&self, data: &str) -> Option<Result<(), AgentError>> {
        let notice: StreamNotice = serde_json::from_str(data).ok()?;
        let bundle = notice.bundle?;
        if let (Ok(Some(stored)), Ok(Some(_))) = (self.load_stored(), self.held_bundle())
            && stored.etag.is_some()
            && stored.etag == notice.etag
        {
            return Some(Ok(()));
        }
        Some(
            self.accept_bundle(&bundle, notice.etag.as_deref())
                .map(|p| report_updated(&p)),
        )
    }

    async fn upload_loop(&self, client: &Client, opts: &AgentOptions) {
        let mut backoff = opts.upload_interval;
        loop {
            tokio::time::sleep(backoff).await;
            match self.upload_spool(client, opts.batch_size).await {
                Ok(_) => backoff = opts.upload_interval,
                Err(e) => {
                    eprintln!("warden agent: audit upload: {e}; will retry");
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// Say which policy a newly accepted bundle put in force.
fn report_updated(p: &BundlePayload) {
    match &p.policy {
        Some(pol) => eprintln!(
            "warden agent: policy {}@v{} in force (serial {})",
            pol.name, pol.version, p.serial
        ),
        None => eprintln!(
            "warden agent: no policy targets this machine (serial {}); sessions will not \
             start",
            p.serial
        ),
    }
}

/// First delay before a failed bundle fetch is retried.
pub const FETCH_RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest delay between retries of a failed bundle fetch.
pub const FETCH_RETRY_MAX: Duration = Duration::from_secs(30);

/// When to retry a failed bundle fetch: armed by a failure, doubled by each further
/// one, cleared by a success.
#[derive(Debug, Default)]
pub(crate) struct RetryTimer {
    next: Option<(tokio::time::Instant, Duration)>,
}

impl RetryTimer {
    /// Record the outcome of a fetch.
    pub(crate) fn record(&mut self, ok: bool) {
        if ok {
            self.next = None;
            return;
        }
        let delay = match self.next {
            Some((_, d)) => (d * 2).min(FETCH_RETRY_MAX),
            None => FETCH_RETRY_FIRST,
        };
        eprintln!("warden agent: retrying the bundle fetch in {delay:?}");
        self.next = Some((tokio::time::Instant::now() + delay, delay));
    }

    /// The delay that the next retry waits, if one is pending.
    #[cfg(test)]
    pub(crate) fn delay(&self) -> Option<Duration> {
        self.next.map(|(_, d)| d)
    }

    /// Resolves when a retry is due; never when none is pending.
    pub(crate) async fn wait(&self) {
        match self.next {
            Some((at, _)) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// For `warden run`: the central policy an enrolled machine must use.
/// `Ok(None)`: not enrolled (use the local policy). `Err`: enrolled but no verified
/// policy — the caller must refuse to start the session (fail closed).
pub fn enrolled_policy(home: &Path) -> Result<Option<EnrolledPolicy>, AgentError> {
    let node = Node::new(home);
    match node.policy_in_force()? {
        PolicyInForce::Standalone => Ok(None),
        PolicyInForce::Central(p) => Ok(Some(p)),
        PolicyInForce::Unassigned { serial } => Err(AgentError::NoBundle(format!(
            "the control plane assigns no policy to this machine (serial {serial})"
        ))),
        PolicyInForce::None { reason } => Err(AgentError::NoBundle(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backs_off_and_resets() {
        let mut r = RetryTimer::default();
        assert_eq!(r.delay(), None);
        r.record(false);
        assert_eq!(r.delay(), Some(FETCH_RETRY_FIRST));
        r.record(false);
        assert_eq!(r.delay(), Some(FETCH_RETRY_FIRST * 2));
        for _ in 0..20 {
            r.record(false);
        }
        assert_eq!(r.delay(), Some(FETCH_RETRY_MAX));
        r.record(true);
        assert_eq!(r.delay(), None);
    }
}
