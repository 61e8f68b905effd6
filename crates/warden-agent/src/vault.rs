//! `vault:NAME` credentials on this machine ([`MachineVault`]): on an enrolled machine
//! they are leased from the control plane's vault for one session, signed with the
//! machine's key, and the session's leases are ended on the server when it ends; on a
//! standalone machine they come from the local store (`WARDEN_HOME/secrets`).
//!
//! A leased value lives only in memory (the caller's `Secret`); nothing here writes it
//! anywhere.

use crate::{AgentError, Node};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;
use warden_control::ControlError;
use warden_secrets::{Lease, LeaseId, LocalStore, VaultClient, VaultError};

/// How long one call to the control plane's vault may take; past it the credential
/// counts as unavailable (a session that needs it does not start).
pub const VAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// The vault of this machine, chosen (and opened) at its first use: the control plane's
/// when the machine is enrolled, else the local store. Cheap to make; makes no request
/// and creates no directory until a `vault:` credential is loaded.
pub struct MachineVault {
    home: PathBuf,
    inner: OnceLock<Result<Inner, String>>,
}

enum Inner {
    Control(ControlVault),
    Local(LocalStore),
}

impl MachineVault {
    /// The vault of the machine whose state is in `home` (WARDEN_HOME).
    pub fn new(home: &Path) -> MachineVault {
        MachineVault {
            home: home.to_path_buf(),
            inner: OnceLock::new(),
        }
    }

    fn inner(&self) -> Result<&Inner, VaultError> {
        self.inner
            .get_or_init(|| {
                let node = Node::new(&self.home);
                match node.identity() {
                    Ok(Some(id)) => Ok(Inner::Control(ControlVault {
                        node,
                        server: id.server,
                        sessions: Mutex::new(HashMap::new()),
                    })),
                    Ok(None) => LocalStore::open(&self.home)
                        .map(Inner::Local)
                        .map_err(|e| format!("the local secret store: {e}")),
                    Err(e) => Err(format!("this machine's enrollment: {e}")),
                }
            })
            .as_ref()
            .map_err(|e| VaultError::Unavailable(e.clone()))
    }
}

impl VaultClient for MachineVault {
    fn lease(&self, name: &str, session: &str) -> Result<Lease, VaultError> {
        match self.inner()? {
            Inner::Control(v) => v.lease(name, session),
            Inner::Local(s) => s.lease(name, session),
        }
    }

    fn revoke(&self, lease: &LeaseId) -> Result<(), VaultError> {
        match self.inner()? {
            Inner::Control(v) => v.revoke(lease),
            Inner::Local(s) => s.revoke(lease),
        }
    }
}

/// The control plane's vault. The server ends leases per session
/// (`DELETE /api/v1/node/leases/{session}`), so revoking a lease ends its session's
/// leases, once.
struct ControlVault {
    node: Node,
    server: String,
    /// Lease id → the session it was taken for, until revoked.
    sessions: Mutex<HashMap<String, String>>,
}

impl ControlVault {
    /// Runs `call` with a signed client on a thread of its own (the caller may or may
    /// not be on a runtime), within [`VAULT_TIMEOUT`].
    fn call<T: Send>(
        &self,
        call: impl AsyncFnOnce(&Node, &warden_control::client::Client) -> Result<T, AgentError> + Send,
    ) -> Result<T, AgentError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| AgentError::Policy(format!("starting a runtime: {e}")))?;
                rt.block_on(async {
                    let client = self.node.client()?;
                    tokio::time::timeout(VAULT_TIMEOUT, call(&self.node, &client))
                        .await
                        .unwrap_or_else(|_| {
                            Err(AgentError::Control(ControlError::Http(format!(
                                "no answer within {} s",
                                VAULT_TIMEOUT.as_secs()
                            ))))
                        })
                })
            })
            .join()
            .unwrap_or_else(|_| Err(AgentError::Policy("the vault call panicked".into())))
        })
    }

    fn lease(&self, name: &str, session: &str) -> Result<Lease, VaultError> {
        let lease = self
            .call(async |node, client| node.lease(client, session, name).await)
            .map_err(|e| match e {
                AgentError::Control(ControlError::Status { status: 404, .. }) => {
                    VaultError::NotFound {
                        name: name.to_string(),
                    }
                }
                AgentError::Control(ControlError::Status {
                    status: 403 | 409,
                    message,
                }) => VaultError::Unavailable(format!(
                    "the control plane at {} refused vault:{name}: {message}",
                    self.server
                )),
                other => VaultError::Unavailable(format!(
                    "the control plane at {} could not lease vault:{name}: {other}",
                    self.server
                )),
            })?;
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(lease.lease_id.0.clone(), session.to_string());
        Ok(lease)
    }

    fn revoke(&self, lease: &LeaseId) -> Result<(), VaultError> {
        let session = {
            let mut map = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(session) = map.remove(&lease.0) else {
                return Ok(()); // already ended with another lease of its session
            };
            map.retain(|_, s| *s != session);
            session
        };
        self.call(async |node, client| node.end_session(client, &session).await)
            .map_err(|e| {
                VaultError::Unavailable(format!(
                    "the control plane at {} could not end the leases of session {session}: {e}",
                    self.server
                ))
            })
    }
}
