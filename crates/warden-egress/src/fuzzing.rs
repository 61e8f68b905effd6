//! Entry points for the fuzz targets in `fuzz/` at the repository root. Not an API:
//! hidden from the docs and free to change with the targets.
//!
//! Everything else the targets drive is public already ([`crate::sni::parse`],
//! [`crate::parse_authority`], [`crate::dns_answer`], [`crate::Egress::new`]); this
//! only adds the explicit proxy's connection handler over an in-memory stream.

use crate::Egress;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

/// Serve one explicit-proxy client connection over `stream` (for example one end of
/// `tokio::io::duplex`): exactly what [`crate::serve_connection`] does for a socket.
pub async fn serve_proxy_io<I>(egress: Egress, stream: I, peer: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    crate::proxy::serve_io(egress, stream, peer).await;
}
