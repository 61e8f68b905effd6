//! A session's credentials as `warden run` and `warden proxy` load them: once at the
//! start ([`CredentialLoader::start`]) and again on every policy reload
//! ([`Reloading`]), from the same host environment, the policy file's directory and
//! this machine's vault ([`warden_agent::MachineVault`]: the control plane's when the
//! machine is enrolled, else the local store). Every vault lease taken, at the start or
//! by a reload, is ended when the loader is dropped, i.e. when the session ends.

use crate::reload::Reload;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use warden_agent::MachineVault;
use warden_egress::{Credentials, Egress, Interception, Reloaded};
use warden_policy::Policy;
use warden_secrets::{LeaseId, LoadContext, PlaceholderKey, VaultClient};

/// This machine's placeholder key in Warden's home, made at first use; `None`, said on
/// stderr, when it can be neither read nor made (sessions then get fresh placeholders).
pub fn placeholder_key() -> Option<PlaceholderKey> {
    let path = crate::home::warden_home().join(PlaceholderKey::FILE);
    PlaceholderKey::load_or_create(&path)
        .inspect_err(|e| {
            eprintln!(
                "warden: placeholders will change from session to session: {}: {e}",
                path.display()
            );
        })
        .ok()
}

pub struct CredentialLoader {
    /// Warden's own environment at the start (`env:` sources, `command:` helpers).
    host_env: HashMap<String, String>,
    /// Relative `file:` paths and `command:` helpers are resolved here.
    base_dir: Option<PathBuf>,
    session: String,
    vault: MachineVault,
    /// Credentials keep their placeholder from one session to the next with it; read (or
    /// made) when a policy first declares a credential.
    placeholders: std::sync::OnceLock<Option<PlaceholderKey>>,
    leases: Mutex<Vec<LeaseId>>,
}

impl CredentialLoader {
    /// For session `session` under the policy file `file` (`None`: the built-in preset
    /// or the central policy).
    pub fn new(file: Option<&Path>, session: &str) -> CredentialLoader {
        CredentialLoader {
            host_env: std::env::vars().collect(),
            base_dir: file.and_then(Path::parent).map(Path::to_path_buf),
            session: session.to_string(),
            vault: MachineVault::new(&crate::home::warden_home()),
            placeholders: std::sync::OnceLock::new(),
            leases: Mutex::new(Vec::new()),
        }
    }

    fn ctx(&self) -> LoadContext<'_> {
        LoadContext {
            env: &self.host_env,
            base_dir: self.base_dir.as_deref(),
            vault: Some(&self.vault),
            session: &self.session,
            command_timeout: warden_secrets::source::DEFAULT_COMMAND_TIMEOUT,
            placeholders: None,
        }
    }

    /// [`Self::ctx`] for loading `policy`'s credentials: with this machine's placeholder
    /// key when the policy declares any.
    fn ctx_for(&self, policy: &Policy) -> LoadContext<'_> {
        let mut ctx = self.ctx();
        if !policy.doc().credentials.is_empty() {
            ctx.placeholders = self.placeholders.get_or_init(placeholder_key).as_ref();
        }
        ctx
    }

    /// The files `policy`'s `file:` credentials are read from: a session must never see
    /// them (it gets placeholders).
    pub fn source_files(&self, policy: &Policy) -> Vec<PathBuf> {
        let ctx = self.ctx();
        policy
            .doc()
            .credentials
            .iter()
            .filter_map(|c| match &c.source {
                warden_policy::CredentialSource::File(p) => {
                    Some(warden_secrets::source::resolve_path(p, &ctx))
                }
                _ => None,
            })
            .collect()
    }

    /// The existing files named on the command lines of `policy`'s `command:`
    /// credentials (`./get-token.sh`, `python3 tools/token.py`), resolved where the
    /// command runs: they run on the host at each start and reload, so a session must
    /// not be able to change them. Words are split on white space, quotes removed; a
    /// file the command reaches in any other way is not found.
    pub fn command_files(&self, policy: &Policy) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for c in &policy.doc().credentials {
            let warden_policy::CredentialSource::Command(cmd) = &c.source else {
                continue;
            };
            for word in cmd.split_whitespace() {
                let word = word.trim_matches(|c| c == '\'' || c == '"' || c == ';');
                if !word.contains('/') {
                    continue;
                }
                let path = match &self.base_dir {
                    Some(base) => base.join(word),
                    None => PathBuf::from(word),
                };
                if path.is_file() {
                    out.push(path);
                }
            }
        }
        out
    }

    fn keep(&self, leases: Vec<LeaseId>) {
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(leases);
    }

    /// The session's interception: a fresh session CA, the upstream trust (system roots
    /// plus `tls.extra_roots`) and every credential `policy` binds, loaded, with its
    /// placeholder (the same as in this machine's other sessions) or the one `given` names. A credential that cannot be loaded
    /// refuses the session.
    pub fn start(
        &self,
        policy: &Policy,
        given: &HashMap<String, String>,
    ) -> Result<Interception, String> {
        let (icpt, leases) =
            Interception::from_policy_adopting(policy, &self.ctx_for(policy), given)
                .map_err(|e| format!("credentials: {e}"))?;
        self.keep(leases);
        Ok(icpt)
    }

    /// The credentials `policy` binds, for a session holding `current`
    /// ([`Credentials::reloaded`]).
    pub fn reload(&self, current: &Credentials, policy: &Policy) -> Result<Reloaded, String> {
        let mut r = current
            .reloaded(policy, &self.ctx_for(policy))
            .map_err(|e| e.to_string())?;
        self.keep(std::mem::take(&mut r.leases));
        Ok(r)
    }
}

impl CredentialLoader {
    /// Ends the vault leases taken so far (each once: a second call finds none). Call it
    /// when the session ends: dropping the loader does it too, but a clone held by a
    /// task of a runtime shut down in the background may outlive the process's exit.
    pub fn end_leases(&self) {
        let leases =
            std::mem::take(&mut *self.leases.lock().unwrap_or_else(PoisonError::into_inner));
        for l in &leases {
            if let Err(e) = self.vault.revoke(l) {
                eprintln!("warden: could not end a credential lease: {e}");
            }
        }
    }
}

impl Drop for CredentialLoader {
    fn drop(&mut self) {
        self.end_leases();
    }
}

/// An egress whose reloads bring the new policy's credentials along: what
/// `watch_policy` reloads for `warden run` and `warden proxy`.
pub struct Reloading {
    pub egress: Egress,
    pub loader: Arc<CredentialLoader>,
    /// Prefixes the messages (`warden run`).
    pub who: &'static str,
}

impl Reload for Reloading {
    fn reload(&self, policy: Policy, source: String) {
        let Some(current) = self.egress.credentials() else {
            return self.egress.reload(policy, source);
        };
        match self.loader.reload(&current, &policy) {
            Ok(r) => {
                for p in &r.problems {
                    eprintln!(
                        "{}: {p}; the credential is left out until a policy change loads it\r",
                        self.who
                    );
                }
                self.egress
                    .reload_with_credentials(policy, source, r.credentials, &r.problems);
            }
            Err(e) => {
                eprintln!(
                    "{}: the new policy's credentials cannot be used ({e}); the credentials in force stay, under the new policy's rules\r",
                    self.who
                );
                self.egress.reload(policy, source);
            }
        }
    }

    fn policy_id(&self) -> String {
        self.egress.policy_id()
    }
}
