//! `warden`: the command-line tool. Thin: it parses arguments and calls the libraries.
//! Each subcommand lives in its own module under `cmd/`.

mod cmd;
mod home;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Govern AI agents at the runtime layer: network, filesystem, credentials and MCP tools.
#[derive(Parser)]
#[command(name = "warden", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command as a governed session.
    Run(cmd::run::Args),
    /// Write, check and explain policies.
    #[command(subcommand)]
    Policy(cmd::policy::Command),
    /// Read the audit log.
    #[command(subcommand)]
    Audit(cmd::audit::Command),
    /// Run the egress proxy on its own, for agents outside a sandbox.
    Proxy(cmd::proxy::Args),
    /// The MCP gateway: every tool call authorized, filtered and logged.
    Mcp(cmd::mcp::Args),
    /// The control plane: API and web console.
    Server(cmd::server::Args),
    /// Manage secrets (the local store; values are read from stdin, never argv).
    #[command(subcommand)]
    Secret(cmd::secret::Command),
}

/// Exit status for Warden's own failures (bad policy, sandbox setup failed).
pub const EXIT_WARDEN_FAILED: u8 = 125;

fn main() -> ExitCode {
    // A sandboxed session re-executes this binary as its init process; that path
    // never returns here.
    cmd::run::maybe_sandbox_init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd::run::main(args),
        Command::Policy(c) => cmd::policy::main(c),
        Command::Audit(c) => cmd::audit::main(c),
        Command::Proxy(args) => cmd::proxy::main(args),
        Command::Mcp(args) => cmd::mcp::main(args),
        Command::Server(args) => cmd::server::main(args),
        Command::Secret(c) => cmd::secret::main(c),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("warden: {err:#}");
            ExitCode::from(EXIT_WARDEN_FAILED)
        }
    }
}
