//! Front ends: how a client reaches the gateway.

pub mod http;
pub mod stdio;
