//! One module per `warden` subcommand.

pub mod agent;
pub mod audit;
pub mod enroll;
pub mod mcp;
pub mod policy;
pub mod proxy;
pub mod remote;
pub mod run;
pub mod secret;
pub mod server;
pub mod status;
