//! `warden`: the command-line tool. Thin: it parses arguments and calls the libraries.
//! Each subcommand lives in its own module under `cmd/`.

mod cmd;
mod credentials;
mod home;
mod reload;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc instead of the C library's allocator: the proxy allocates and frees small
/// objects on every request across threads (headers, events), where glibc's malloc
/// spent about an eighth of the proxy's CPU (`perf` under bench/proxy.sh's load).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Join a control plane.
    Enroll(cmd::enroll::Args),
    /// The node daemon: keeps the signed policy current and delivers the audit spool.
    Agent(cmd::agent::Args),
    /// Show which policy is in force on this machine and where it came from.
    Status(cmd::status::Args),
    /// Create enrollment and API tokens on a control plane.
    #[command(subcommand)]
    Token(cmd::remote::TokenCommand),
    /// Machines enrolled in a control plane.
    #[command(subcommand)]
    Machines(cmd::remote::MachinesCommand),
    /// Sessions on enrolled machines.
    #[command(subcommand)]
    Sessions(cmd::remote::SessionsCommand),
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
        Command::Enroll(args) => cmd::enroll::main(args),
        Command::Agent(args) => cmd::agent::main(args),
        Command::Status(args) => cmd::status::main(args),
        Command::Token(c) => cmd::remote::token(c),
        Command::Machines(c) => cmd::remote::machines(c),
        Command::Sessions(c) => cmd::remote::sessions(c),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("warden: {err:#}");
            ExitCode::from(EXIT_WARDEN_FAILED)
        }
    }
}
