//! Relaying an allowed byte stream (a CONNECT tunnel, a TUN-captured TCP flow)
//! after the domain-fronting check on its first bytes.
//!
//! Upstream-to-client bytes flow from the start, so server-speaks-first protocols
//! (SSH banners, SMTP) work; client-to-upstream bytes are held until the first bytes
//! are classified: not TLS, or a ClientHello whose SNI passed
//! [`Egress::check_hello`]. Only then is anything sent upstream.

use crate::egress::{Egress, Upstream};
use crate::io::Counted;
use crate::sni::{self, Hello};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a client may take to finish a ClientHello it has started.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Relay `client` <-> `upstream` until both directions end. Records the connection's
/// close event (bytes, duration) when done.
pub async fn relay<C>(egress: &Egress, client: C, upstream: Upstream)
where
    C: AsyncRead + AsyncWrite + Send + Unpin,
{
    let Upstream { stream, mut guard } = upstream;
    let counters = guard.counters.clone();
    let (ur, uw) = stream.into_split();
    let mut ur = Counted::new(ur, counters.clone(), ());
    let mut uw = Counted::new(uw, counters, ());
    let (mut cr, mut cw) = tokio::io::split(client);

    let down = async {
        let r = tokio::io::copy(&mut ur, &mut cw).await;
        let _ = cw.shutdown().await;
        r.map(|_| ())
    };
    let up = async {
        let mut first = Vec::with_capacity(2048);
        let mut hello = Hello::NeedMore;
        let mut buf = [0u8; 4096];
        // The first read may wait as long as the client likes; once a TLS record has
        // started, the rest of the ClientHello must come within HELLO_TIMEOUT.
        while hello == Hello::NeedMore {
            let read = if first.is_empty() {
                cr.read(&mut buf).await
            } else {
                match tokio::time::timeout(HELLO_TIMEOUT, cr.read(&mut buf)).await {
                    Ok(r) => r,
                    Err(_) => {
                        hello = Hello::Malformed("ClientHello not completed in time");
                        break;
                    }
                }
            };
            let n = read?;
            if n == 0 {
                if first.is_empty() {
                    uw.shutdown().await?;
                    return Ok(());
                }
                hello = Hello::Malformed("stream ended inside the ClientHello");
                break;
            }
            first.extend_from_slice(&buf[..n]);
            hello = sni::parse(&first);
            if hello == Hello::NeedMore && first.len() > sni::MAX_HELLO {
                hello = Hello::Malformed("ClientHello too large");
            }
        }
        if let Hello::ClientHello { ech: true, .. } = &hello {
            tracing::debug!("{}: ClientHello carries an ECH extension", guard.target);
        }
        if egress.check_hello(&guard, &hello).await.is_err() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "denied by the TLS server name check",
            ));
        }
        uw.write_all(&first).await?;
        tokio::io::copy(&mut cr, &mut uw).await?;
        uw.shutdown().await?;
        Ok::<(), std::io::Error>(())
    };
    if let Err(e) = tokio::try_join!(up, down) {
        guard.fail(e.to_string());
        // End the client's side at once: a TUN flow that is merely dropped leaves the
        // client waiting for its own timeout.
        let _ = tokio::time::timeout(HELLO_TIMEOUT, cw.shutdown()).await;
    }
}
