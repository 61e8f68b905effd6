//! Shared set-up of the fuzz targets: one egress enforcing a small policy, an audit
//! log in memory-backed storage, and a resolver that records what it is asked and
//! never answers (so no target ever dials anything).

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use warden_egress::{Egress, EgressConfig, Identity, Lookup, Resolve};
use warden_policy::{Policy, Principal};

/// The policy every target runs under.
pub const POLICY: &str = r#"
version = 1
name = "fuzz"
[network]
allow = ["allowed.test", "*.wild.test:*", "ssh.test:22"]
deny = ["deny.wild.test"]
[[network.http]]
host = "api.test"
methods = ["GET"]
paths = ["/ok/**"]
"#;

/// Could [`POLICY`] allow a connection to the canonical `name` on some port? The
/// oracle for "a name no rule allows is never resolved nor answered".
pub fn could_allow(name: &str) -> bool {
    matches!(name, "allowed.test" | "ssh.test" | "api.test")
        || (name.ends_with(".wild.test") && name != "deny.wild.test")
}

/// A resolver that records every name it is asked for and resolves none. Clones
/// share the record.
#[derive(Default, Clone)]
pub struct Recording {
    pub asked: Arc<Mutex<Vec<String>>>,
}

impl Resolve for Recording {
    fn resolve<'a>(&'a self, name: &'a str, _port: u16) -> Lookup<'a> {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.to_string());
        Box::pin(async move {
            Err::<Vec<IpAddr>, _>(io::Error::new(io::ErrorKind::NotFound, "fuzz: no answers"))
        })
    }
}

pub struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub egress: Egress,
    pub resolver: Recording,
    audit_path: PathBuf,
    runs: AtomicU64,
}

impl Harness {
    /// Called once per input: empties the audit log now and then so a long run does
    /// not fill memory (the writer appends with O_APPEND, so truncation is safe).
    pub fn tick(&self) {
        if self.runs.fetch_add(1, Ordering::Relaxed) % 20_000 == 0 {
            if let Ok(f) = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.audit_path)
            {
                let _ = f.set_len(0);
            }
        }
        self.resolver
            .asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn asked(&self) -> Vec<String> {
        self.resolver
            .asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let audit_path = dir.join(format!("warden-fuzz-audit-{}.jsonl", std::process::id()));
        let audit = warden_audit::AuditLog::open(&audit_path).expect("open the fuzz audit log");
        let policy =
            Policy::parse(POLICY, "fuzz.toml", std::path::Path::new("/")).expect("fuzz policy");
        let resolver = Recording::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let egress = Egress::new(
            policy,
            EgressConfig {
                identity: Identity::default(),
                principal: Principal::default(),
                policy_source: "fuzz.toml".into(),
                audit,
                resolver: Arc::new(resolver.clone()),
                connect_timeout: Duration::from_millis(100),
                interception: None,
            },
        );
        Harness {
            rt,
            egress,
            resolver,
            audit_path,
            runs: AtomicU64::new(0),
        }
    })
}
