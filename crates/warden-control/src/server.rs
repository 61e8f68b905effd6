//! Server startup and shared state: opens the store, loads or creates the keys and the
//! first admin token, starts the HTTP listener and the background tasks (PostgreSQL
//! LISTEN/NOTIFY fan-out, last-seen flushing, audit retention).

use crate::crypto::{MasterKey, hash_token, new_token, random_bytes};
use crate::error::ControlError;
use crate::metrics::Metrics;
use crate::store::{Backend, PolicyRow, Store, TokenRow, now_ms};
use ed25519_dalek::SigningKey;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{RwLock, watch};

/// The PostgreSQL channel on which replicas announce a policy change.
pub const NOTIFY_CHANNEL: &str = "warden_policy";

/// How `warden server` was asked to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `sqlite://…` or `postgres://…`; default: SQLite under `data_dir`.
    pub database: Option<String>,
    pub data_dir: PathBuf,
    /// `WARDEN_ADMIN_TOKEN`, when set.
    pub admin_token: Option<String>,
    /// `WARDEN_MASTER_KEY`, when set.
    pub master_key: Option<String>,
    /// Delete audit events older than this many days (0: keep forever).
    pub audit_retention_days: u32,
    /// How often the retention runs (the first run is at start); default one hour.
    pub retention_interval: Duration,
    /// How often a replica re-reads the policy serial even without a notification.
    pub serial_poll: Duration,
    /// Serve HTTPS with this certificate chain and key (PEM files) instead of HTTP.
    pub tls: Option<TlsFiles>,
}

/// The server's TLS certificate chain and private key, PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Config {
        Config {
            listen,
            database: None,
            data_dir,
            admin_token: None,
            master_key: None,
            audit_retention_days: 0,
            retention_interval: Duration::from_secs(3600),
            serial_poll: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// The policy serial and when this replica learned it changed.
#[derive(Debug, Clone, Copy)]
pub struct Serial {
    pub value: i64,
    pub changed_at: Instant,
}

/// State shared by every request.
pub struct AppInner {
    pub store: Store,
    pub signing: SigningKey,
    pub public_key: String,
    pub master: MasterKey,
    pub serial: watch::Sender<Serial>,
    pub metrics: Metrics,
    /// `machine:nonce` → expiry (Unix seconds) of signed requests already seen.
    pub nonces: Mutex<HashMap<String, i64>>,
    /// machine → (last seen ms, policy served) not yet written to the store.
    pub seen: Mutex<HashMap<String, (i64, Option<String>)>>,
    /// Streams open per machine on this replica.
    pub connected: Mutex<HashMap<String, u32>>,
    /// Active policies and revoked machines, cached for one serial.
    pub policies: RwLock<Arc<ActiveSet>>,
    pub config: Config,
    /// Set when the server stops: node streams end so that shutdown can finish.
    pub stopping: watch::Sender<bool>,
    /// Where pushed policies are validated from: nothing relative resolves there.
    pub policy_base: PathBuf,
}

impl std::fmt::Debug for AppInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppInner").finish_non_exhaustive()
    }
}

pub type App = Arc<AppInner>;

impl AppInner {
    /// Re-read the serial from the store and wake the streams when it moved.
    pub async fn refresh_serial(&self) -> Result<(), ControlError> {
        let value = self.store.max_seq().await?;
        self.serial.send_if_modified(|s| {
            if value > s.value {
                *s = Serial {
                    value,
                    changed_at: Instant::now(),
                };
                true
            } else {
                false
            }
        });
        Ok(())
    }

    /// The active policies at the current serial.
    pub async fn active_policies(&self) -> Result<(i64, Arc<Vec<PolicyRow>>), ControlError> {
        let set = self.active_set().await?;
        Ok((set.serial, set.policies.clone()))
    }

    /// The active policies and the revoked machines at the current serial: read from
    /// the store once per serial (and after a revocation), however many machines ask.
    pub async fn active_set(&self) -> Result<Arc<ActiveSet>, ControlError> {
        let serial = self.serial.borrow().value;
        {
            let cached = self.policies.read().await;
            if cached.serial == serial && serial != 0 {
                return Ok(cached.clone());
            }
        }
        let mut cached = self.policies.write().await;
        if cached.serial == serial && serial != 0 {
            return Ok(cached.clone());
        }
        let set = Arc::new(ActiveSet {
            serial,
            policies: Arc::new(self.store.active_policies().await?),
            revoked: self.store.revoked_machines().await?.into_iter().collect(),
        });
        *cached = set.clone();
        Ok(set)
    }

    /// Forget the cached set (a machine was revoked): the next reader reloads it.
    pub async fn invalidate_active_set(&self) {
        let mut cached = self.policies.write().await;
        *cached = Arc::new(ActiveSet::empty());
    }
}

/// What every machine's bundle is derived from at one serial.
#[derive(Debug)]
pub struct ActiveSet {
    pub serial: i64,
    pub policies: Arc<Vec<PolicyRow>>,
    /// Machines revoked when the set was read: they get no bundle on their stream.
    pub revoked: HashSet<String>,
}

impl ActiveSet {
    fn empty() -> ActiveSet {
        ActiveSet {
            serial: -1,
            policies: Arc::new(Vec::new()),
            revoked: HashSet::new(),
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    /// Printed once on first start when no `WARDEN_ADMIN_TOKEN` was given.
    pub created_admin_token: Option<String>,
    pub app: App,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stop accepting connections and wait for the listener to finish.
    pub async fn stop(mut self) {
        self.app.stopping.send_replace(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Streams end on `stopping`; anything still open after the grace period is cut.
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        flush_seen(&self.app).await;
    }

    /// Wait until the server stops on its own (it does not, short of an error).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

async fn load_signing_key(store: &Store, master: &MasterKey) -> Result<SigningKey, ControlError> {
    let seed = zeroize::Zeroizing::new(random_bytes::<32>()?);
    let candidate = SigningKey::from_bytes(&seed);
    let sealed = master.seal("server-signing-key", &seed[..])?;
    let public = crate::proto::encode_public_key(&candidate.verifying_key());
    let (stored_sealed, _) = store.server_key("bundle", (&sealed, &public)).await?;
    let plain = master.open("server-signing-key", &stored_sealed)?;
    let arr: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| ControlError::Corrupt("server signing key is not 32 bytes".into()))?;
    Ok(SigningKey::from_bytes(&arr))
}

async fn bootstrap_admin(store: &Store, config: &Config) -> Result<Option<String>, ControlError> {
    let row = |token: &str| TokenRow {
        id: "admin-bootstrap".into(),
        hash: hash_token(token),
        role: "admin".into(),
        name: "first admin".into(),
        labels: BTreeMap::new(),
        created_at: now_ms(),
        expires_at: None,
        one_time: false,
        used_at: None,
        used_by: None,
    };
    if let Some(t) = config
        .admin_token
        .as_deref()
        .filter(|t| !t.trim().is_empty())
    {
        store.upsert_token(&row(t)).await?;
        store.setting_insert("admin_bootstrapped", "env").await?;
        return Ok(None);
    }
    if store
        .setting_insert("admin_bootstrapped", "generated")
        .await?
    {
        let token = new_token()?;
        store.insert_token(&row(&token)).await?;
        return Ok(Some(token));
    }
    Ok(None)
}

/// Start the server: open the store, bind, and serve until stopped.
pub async fn start(config: Config) -> Result<Running, ControlError> {
    // A bad certificate or key stops the start before anything else happens.
    let tls = match &config.tls {
        Some(t) => Some(crate::tls::acceptor(&t.cert, &t.key)?),
        None => None,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|e| ControlError::io(&config.data_dir, e))?;
    let url = match &config.database {
        Some(u) => u.clone(),
        None => format!(
            "sqlite://{}?mode=rwc",
            config.data_dir.join("warden.db").display()
        ),
    };
    let store = Store::open(&url).await?;
    let master = MasterKey::load(
        config.master_key.as_deref(),
        &config.data_dir.join("master.key"),
    )?;
    let signing = load_signing_key(&store, &master).await?;
    let public_key = crate::proto::encode_public_key(&signing.verifying_key());
    let created_admin_token = bootstrap_admin(&store, &config).await?;
    let serial_value = store.max_seq().await?;
    let (serial, _) = watch::channel(Serial {
        value: serial_value,
        changed_at: Instant::now(),
    });
    let policy_base = config.data_dir.join("policy-root");
    let app: App = Arc::new(AppInner {
        store,
        signing,
        public_key,
        master,
        serial,
        metrics: Metrics::default(),
        nonces: Mutex::new(HashMap::new()),
        seen: Mutex::new(HashMap::new()),
        connected: Mutex::new(HashMap::new()),
        policies: RwLock::new(Arc::new(ActiveSet::empty())),
        config: config.clone(),
        stopping: watch::channel(false).0,
        policy_base,
    });

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ControlError::Config(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ControlError::Config(format!("listener address: {e}")))?;
    let router = crate::api::router(app.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let bg = spawn_background(app.clone());
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
        };
        let served = match tls {
            Some(acceptor) => match crate::tls::TlsListener::new(listener, acceptor) {
                Ok(l) => {
                    axum::serve(l, router)
                        .with_graceful_shutdown(shutdown)
                        .await
                }
                Err(e) => Err(e),
            },
            None => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        };
        if let Err(e) = served {
            tracing::error!("server stopped: {e}");
        }
        for t in bg {
            t.abort();
        }
    });
    Ok(Running {
        addr,
        created_admin_token,
        app,
        shutdown: Some(tx),
        task,
    })
}

fn spawn_background(app: App) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    // Flush last-seen times in batches rather than writing on every request.
    let a = app.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            flush_seen(&a).await;
        }
    }));
    // Catch changes made by other replicas even if a notification was missed.
    let a = app.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(a.config.serial_poll);
        loop {
            tick.tick().await;
            if let Err(e) = a.refresh_serial().await {
                tracing::warn!("policy serial refresh failed: {e}");
            }
        }
    }));
    if app.store.backend() == Backend::Postgres {
        let a = app.clone();
        tasks.push(tokio::spawn(async move { listen_loop(a).await }));
    }
    if app.config.audit_retention_days > 0 {
        let a = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(a.config.retention_interval);
            loop {
                tick.tick().await;
                match apply_retention(&a, now_ms()).await {
                    Ok(n) if n > 0 => tracing::info!("audit retention removed {n} events"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("audit retention failed: {e}"),
                }
            }
        }));
    }
    tasks
}

/// Delete the audit events older than the retention (`audit_retention_days` before
/// `now_ms`, by the event's own time); how many were deleted. Nothing with retention 0.
pub async fn apply_retention(app: &AppInner, now_ms: i64) -> Result<u64, ControlError> {
    let days = i64::from(app.config.audit_retention_days);
    if days == 0 {
        return Ok(0);
    }
    let before_us = now_ms
        .saturating_sub(days.saturating_mul(86_400_000))
        .saturating_mul(1000);
    app.store.delete_events_before(before_us).await
}

/// Write the pending last-seen times.
pub async fn flush_seen(app: &AppInner) {
    let batch: Vec<(String, i64, Option<String>)> = match app.seen.lock() {
        Ok(mut m) => m.drain().map(|(k, (t, h))| (k, t, h)).collect(),
        Err(_) => return,
    };
    if batch.is_empty() {
        return;
    }
    if let Err(e) = app.store.touch_machines(&batch).await {
        tracing::warn!("recording last-seen times failed: {e}");
    }
}

async fn listen_loop(app: App) {
    loop {
        match sqlx::postgres::PgListener::connect(app.store.url()).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
                    tracing::warn!("LISTEN failed: {e}");
                } else {
                    // Anything announced while we were not listening.
                    let _ = app.refresh_serial().await;
                    loop {
                        match listener.recv().await {
                            Ok(_) => {
                                if let Err(e) = app.refresh_serial().await {
                                    tracing::warn!("policy serial refresh failed: {e}");
                                }
                            }
                            Err(e) => {
                                tracing::warn!("LISTEN connection lost: {e}");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("cannot open the LISTEN connection: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
