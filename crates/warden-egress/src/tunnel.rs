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
/// The relay buffer a tunnel starts with (what `tokio::io::copy` uses), so an idle
/// tunnel costs no more than before ...
const MIN_BUF: usize = 8 * 1024;
/// ... and what it grows to while reads keep filling it, so a bulk transfer takes an
/// eighth of the syscalls and wake-ups (bench/proxy.sh: the 1 GiB CONNECT transfer).
const MAX_BUF: usize = 256 * 1024;

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
        let r = copy_growing(&mut ur, &mut cw).await;
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
        copy_growing(&mut cr, &mut uw).await?;
        uw.shutdown().await?;
        Ok::<(), std::io::Error>(())
    };
    if let Err(e) = tokio::try_join!(up, down) {
        guard.fail(e.to_string());
    }
}

/// Copy `r` to `w` until `r` ends; the number of bytes copied. Like
/// `tokio::io::copy`, but the buffer doubles (from [`MIN_BUF`] up to [`MAX_BUF`])
/// each time a read fills it. `w` is flushed after every write, which is at least as
/// often as `tokio::io::copy` flushes (whenever the reader has nothing ready).
async fn copy_growing<R, W>(r: &mut R, w: &mut W) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; MIN_BUF];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        total += n as u64;
        if n == buf.len() && buf.len() < MAX_BUF {
            buf.resize((buf.len() * 2).min(MAX_BUF), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte arrives, in order, whether the reader hands out whole buffers (the
    /// buffer grows) or dribbles (it does not), and the count is exact.
    #[tokio::test]
    async fn copy_growing_relays_every_byte() {
        let data: Vec<u8> = (0..3 * MAX_BUF + 12_345).map(|i| (i % 251) as u8).collect();
        for chunk in [1, 1000, MIN_BUF, MAX_BUF * 4] {
            let (mut tx, mut rx) = tokio::io::duplex(MAX_BUF * 8);
            let send = data.clone();
            let writer = tokio::spawn(async move {
                for piece in send.chunks(chunk) {
                    tx.write_all(piece).await?;
                }
                tx.shutdown().await
            });
            let mut out = Vec::new();
            let n = copy_growing(&mut rx, &mut out).await;
            assert_eq!(n.ok(), Some(data.len() as u64), "chunk {chunk}");
            assert!(out == data, "chunk {chunk}: bytes differ");
            assert!(matches!(writer.await, Ok(Ok(()))));
        }
    }
}
