//! `warden secret set|ls|rm`: the local secret store under `WARDEN_HOME/secrets/`
//! (warden-secrets' `LocalStore`). Values are read from stdin, never from argv; `ls`
//! prints names only. Policies use a stored secret as `source = "vault:NAME"`.

use anyhow::Context;
use std::io::{self, IsTerminal, Read, Write};
use std::process::ExitCode;
use warden_secrets::Zeroizing;
use warden_secrets::source::MAX_SECRET_BYTES;
use warden_secrets::{LocalStore, Secret, StoreError};

/// Exit status for usage errors (bad name, empty value).
const EXIT_USAGE: u8 = 2;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Store a secret. The value is read from stdin (one trailing newline removed);
    /// on a terminal it is prompted for without echo. Never pass it as an argument.
    Set(SetArgs),
    /// List the stored secrets' names (never their values).
    Ls(LsArgs),
    /// Delete a stored secret.
    Rm(RmArgs),
}

#[derive(clap::Args)]
pub struct SetArgs {
    /// The secret's name: 1-64 of A-Z a-z 0-9 _ . -
    name: String,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(clap::Args)]
pub struct LsArgs {
    /// Print a JSON array of names.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// The secret's name.
    name: String,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(clap::Args)]
struct ServerArg {
    /// Manage the control plane's vault instead of the local store.
    #[arg(
        long,
        value_name = "URL",
        env = "WARDEN_SERVER",
        hide_env_values = true
    )]
    server: Option<String>,
}

impl ServerArg {
    /// The control plane to talk to, when `--server`/WARDEN_SERVER names one; its API
    /// token comes from WARDEN_TOKEN (never from argv).
    fn remote(&self) -> anyhow::Result<Option<super::remote::Conn>> {
        let Some(server) = self.server.as_deref().filter(|s| !s.trim().is_empty()) else {
            return Ok(None);
        };
        let token = std::env::var("WARDEN_TOKEN").unwrap_or_default();
        if token.is_empty() {
            anyhow::bail!(
                "--server {server} needs an admin API token in WARDEN_TOKEN \
                 (create one with `warden token create`, or unset WARDEN_SERVER to use the local store)"
            );
        }
        Ok(Some(super::remote::Conn {
            server: server.to_string(),
            token,
        }))
    }
}

pub fn main(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Set(args) => set(&args),
        Command::Ls(args) => ls(&args),
        Command::Rm(args) => rm(&args),
    }
}

fn open_store() -> anyhow::Result<LocalStore> {
    let home = crate::home::warden_home();
    LocalStore::open(&home)
        .with_context(|| format!("opening the local secret store in {}", home.display()))
}

/// A usage error (exit 2) for names and values; anything else is Warden's failure.
fn usage(err: &StoreError) -> Option<ExitCode> {
    match err {
        StoreError::InvalidName { .. } | StoreError::Empty { .. } | StoreError::TooLarge { .. } => {
            eprintln!("warden: {err}");
            Some(ExitCode::from(EXIT_USAGE))
        }
        _ => None,
    }
}

fn set(args: &SetArgs) -> anyhow::Result<ExitCode> {
    if let Some(conn) = args.server.remote()? {
        return super::remote::secret_set(&conn, &args.name);
    }
    if let Err(err) = warden_secrets::store::validate_name(&args.name) {
        return usage(&err).map_or_else(|| Err(err.into()), Ok);
    }
    let value = read_value(&args.name)?;
    let store = open_store()?;
    match store.set(&args.name, &value) {
        Ok(()) => {
            eprintln!("stored secret {:?} in {}", args.name, store.dir().display());
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => usage(&err).map_or_else(|| Err(err.into()), Ok),
    }
}

/// The value from stdin: prompted without echo on a terminal, else read to EOF.
/// One trailing newline (`\n` or `\r\n`) is removed.
fn read_value(name: &str) -> anyhow::Result<Secret> {
    let stdin = io::stdin();
    let mut buf = Zeroizing::new(Vec::new());
    if stdin.is_terminal() {
        eprint!("value for {name}: ");
        io::stderr().flush().ok();
        let saved = rustix::termios::tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut quiet = saved.clone();
            quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
            rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet)
                .context("turning off terminal echo")?;
        }
        let mut line = Zeroizing::new(String::new());
        let read = stdin.read_line(&mut line);
        if let Some(saved) = &saved {
            let _ =
                rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, saved);
        }
        eprintln!();
        read.context("reading the value from the terminal")?;
        buf.extend_from_slice(line.as_bytes());
    } else {
        stdin
            .lock()
            .take(MAX_SECRET_BYTES as u64 + 3)
            .read_to_end(&mut buf)
            .context("reading the value from stdin")?;
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(Secret::new(std::mem::take(&mut *buf)))
}

fn ls(args: &LsArgs) -> anyhow::Result<ExitCode> {
    if let Some(conn) = args.server.remote()? {
        return super::remote::secret_ls(&conn, args.json);
    }
    let names = open_store()?.list()?;
    let mut out = io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&names)?)?;
    } else {
        for name in &names {
            writeln!(out, "{name}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn rm(args: &RmArgs) -> anyhow::Result<ExitCode> {
    if let Some(conn) = args.server.remote()? {
        return super::remote::secret_rm(&conn, &args.name);
    }
    let store = open_store()?;
    match store.remove(&args.name) {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => {
            eprintln!(
                "warden: no secret named {:?} in {}",
                args.name,
                store.dir().display()
            );
            Ok(ExitCode::FAILURE)
        }
        Err(err) => usage(&err).map_or_else(|| Err(err.into()), Ok),
    }
}
