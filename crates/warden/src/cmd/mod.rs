//! One module per `warden` subcommand.

pub mod audit;
pub mod mcp;
pub mod policy;
pub mod proxy;
pub mod run;
pub mod secret;
pub mod server;
