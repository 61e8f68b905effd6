//! Live policy reload for the commands that enforce a policy while they run (`warden
//! proxy`, `warden run`, `warden mcp`): the policy file (on an enrolled machine, the
//! agent's verified bundle) is watched (size, mtime and contents, every
//! [`POLL`]) and, when asked, re-read on SIGHUP. A valid new policy applies to new
//! connections at once; an invalid one is reported on stderr with its diagnostics and
//! the policy in force stays.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use warden_egress::Egress;
use warden_policy::Policy;

/// How often the policy file is checked for changes.
pub const POLL: Duration = Duration::from_millis(500);

/// What identifies a version of the policy file: size, mtime and contents.
#[derive(PartialEq, Eq)]
struct Seen {
    len: u64,
    mtime: Option<SystemTime>,
    contents: Vec<u8>,
}

fn seen(path: &Path) -> Option<Seen> {
    let meta = std::fs::metadata(path).ok()?;
    let contents = std::fs::read(path).ok()?;
    Some(Seen {
        len: meta.len(),
        mtime: meta.modified().ok(),
        contents,
    })
}

/// How a policy file becomes the policy to enforce (e.g. an MCP server's own part of it).
pub type Loader = Box<dyn Fn(&Path) -> Result<Policy, String> + Send + Sync>;

/// The whole file, as `Policy::load` reads it.
pub fn whole_file() -> Loader {
    Box::new(|p| Policy::load(p).map_err(|e| e.to_string()))
}

/// What enforces a policy and takes a new one: the egress proxy, the MCP gateway's
/// authorizer.
pub trait Reload: Send + 'static {
    /// Put `policy` in force for new connections and calls; `source` says where from.
    fn reload(&self, policy: Policy, source: String);
    /// `name@digest` of the policy in force.
    fn policy_id(&self) -> String;
}

impl Reload for Egress {
    fn reload(&self, policy: Policy, source: String) {
        Egress::reload(self, policy, source);
    }
    fn policy_id(&self) -> String {
        Egress::policy_id(self)
    }
}

/// Watches `path` until the task is dropped; `who` prefixes the messages
/// (`warden proxy`, `warden run`, `warden mcp`). With `on_hup`, SIGHUP forces a re-read.
/// Runs on a multi-threaded runtime (a reload blocks one of its workers meanwhile).
pub async fn watch_policy(
    egress: impl Reload,
    path: PathBuf,
    load: Loader,
    on_hup: bool,
    who: &'static str,
) {
    let mut hup = if on_hup {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("{who}: SIGHUP reloads are unavailable: {e}");
                None
            }
        }
    } else {
        None
    };
    let mut last = seen(&path);
    let mut tick = tokio::time::interval(POLL);
    loop {
        let why = tokio::select! {
            _ = tick.tick() => "file changed",
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
        };
        let now = seen(&path);
        if why != "SIGHUP" && now == last {
            continue;
        }
        last = now;
        // Loading may block (a policy's new credentials can come from a helper
        // command or the control plane's vault): off the runtime's workers.
        tokio::task::block_in_place(|| match load(&path) {
            Ok(p) => {
                egress.reload(p, path.display().to_string());
                eprintln!(
                    "{who}: reloaded {} ({why}); now enforcing {}\r",
                    path.display(),
                    egress.policy_id()
                );
            }
            Err(e) => eprintln!(
                "{who}: {} is invalid ({why}); keeping {} in force:\n{e}\r",
                path.display(),
                egress.policy_id()
            ),
        });
    }
}
