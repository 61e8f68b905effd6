//! An allowed byte stream (a CONNECT tunnel, a TUN-captured TCP flow): classify its
//! first bytes, then relay, serve HTTP, or intercept TLS.
//!
//! - The server speaks first (SSH banners, SMTP): relayed as bytes (the client's
//!   first bytes still get the ClientHello check).
//! - A TLS ClientHello: the SNI check ([`Egress::check_hello`]); then, when the
//!   policy wants the host intercepted ([`Egress::wants_interception`]), TLS is
//!   terminated ([`crate::mitm`]); otherwise relayed end to end.
//! - Plain HTTP/1.x (a complete request line ending in `HTTP/1.0|1.1`) or the HTTP/2
//!   prior-knowledge preface: served as HTTP, so `[[network.http]]` rules and the
//!   credential guard apply to every request ([`crate::http`]).
//! - Anything else: relayed as bytes, unless the host has `[[network.http]]` rules
//!   (then Warden must read the requests, and refuses what it cannot read).
//!
//! Client-to-upstream bytes are held until classified; nothing is sent upstream
//! before the decision.

use crate::egress::{ConnGuard, Egress, Upstream};
use crate::http::{self, Exchange, Proto};
use crate::io::{Counted, Prefixed};
use crate::sni::{self, Hello};
use crate::target::Target;
use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_policy::host::{RequestHost, canonical_host};

/// How long a client may take to finish a ClientHello or a request line it has
/// started.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The relay buffer a tunnel starts with (what `tokio::io::copy` uses), so an idle
/// tunnel costs no more than before ...
const MIN_BUF: usize = 8 * 1024;
/// ... and what it grows to while reads keep filling it, so a bulk transfer takes a
/// thirty-second of the syscalls and wake-ups (bench/proxy.sh: the 1 GiB CONNECT
/// transfer; 64 KiB and 1 MiB were measured too and were no faster).
const MAX_BUF: usize = 256 * 1024;

/// The HTTP/2 connection preface (prior knowledge, RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest HTTP/1 request line Warden waits for before deciding it is not HTTP.
const MAX_REQUEST_LINE: usize = 16 * 1024;

/// Serve `client` <-> `upstream` until both directions end. Records the connection's
/// close event (bytes, duration) when done.
pub async fn relay<C>(egress: &Egress, client: C, upstream: Upstream)
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Upstream { stream, mut guard } = upstream;
    let mut client = client;
    let mut first = Vec::with_capacity(2048);
    let mut buf = vec![0u8; 4096];
    // Who speaks first? A server that does is not speaking TLS or HTTP to us.
    let client_first = tokio::select! {
        biased;
        r = client.read(&mut buf) => match r {
            Ok(n) => {
                first.extend_from_slice(&buf[..n]);
                n > 0
            }
            Err(e) => {
                guard.fail(e.to_string());
                return;
            }
        },
        _ = stream.readable() => false,
    };
    if !client_first {
        return relay_raw(egress, client, stream, guard, first).await;
    }
    let hello = loop {
        let h = sni::parse(&first);
        if h != Hello::NeedMore {
            break h;
        }
        if first.len() > sni::MAX_HELLO {
            break Hello::Malformed("ClientHello too large");
        }
        match tokio::time::timeout(HELLO_TIMEOUT, client.read(&mut buf)).await {
            Ok(Ok(0)) => break Hello::Malformed("stream ended inside the ClientHello"),
            Ok(Ok(n)) => first.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => {
                guard.fail(e.to_string());
                return;
            }
            Err(_) => break Hello::Malformed("ClientHello not completed in time"),
        }
    };
    match &hello {
        Hello::ClientHello { sni, alpn, ech } => {
            if *ech {
                tracing::debug!("{}: ClientHello carries an ECH extension", guard.target);
            }
            if egress.check_hello(&guard, &hello).await.is_err() {
                guard.fail("denied by the TLS server name check");
                return;
            }
            let origin = origin_for(&guard.target, sni.as_deref());
            if egress.wants_interception(&origin.host) {
                crate::mitm::serve(
                    egress,
                    Prefixed::new(first, client),
                    stream,
                    &mut guard,
                    origin,
                    sni.clone(),
                    alpn,
                )
                .await;
                return;
            }
            relay_raw(egress, client, stream, guard, first).await;
        }
        Hello::NotTls => match sniff_http(&mut client, &mut first).await {
            Some(proto) => plain_http(egress, client, stream, guard, first, proto).await,
            None if egress.http_restricted(&guard.target.host) => {
                let _ = egress
                    .reject(
                        "http",
                        &guard.target.to_string(),
                        "this host has [[network.http]] rules and the connection is not HTTP/1.x or HTTP/2 that Warden can read",
                        guard.ctx,
                    )
                    .await;
                guard.fail("not readable HTTP on a host with [[network.http]] rules");
            }
            None => relay_raw(egress, client, stream, guard, first).await,
        },
        Hello::Malformed(_) | Hello::NeedMore => {
            // Recorded and refused by the check.
            let _ = egress.check_hello(&guard, &hello).await;
            guard.fail("denied by the TLS server name check");
        }
    }
}

/// The host a TLS connection is for: the connection's name, or, for a connection to
/// an address, the server name its ClientHello asked for (already checked to be an
/// allowed name by [`Egress::check_hello`]).
fn origin_for(target: &Target, sni: Option<&str>) -> Target {
    if let (RequestHost::Ip(_), Some(sni)) = (&target.host, sni)
        && let Ok(name) = canonical_host(sni)
    {
        return Target::new(RequestHost::Name(name), target.port);
    }
    target.clone()
}

/// Is this an HTTP/1.x request or the HTTP/2 preface? Reads more of the first line
/// when needed (bounded in size and time). `None`: not HTTP Warden reads.
async fn sniff_http<C: AsyncRead + Unpin>(client: &mut C, first: &mut Vec<u8>) -> Option<Proto> {
    let mut buf = [0u8; 4096];
    loop {
        if first.starts_with(H2_PREFACE) {
            return Some(Proto::H2);
        }
        let h2_prefix = H2_PREFACE.starts_with(first);
        if !h2_prefix {
            // A method token, a space, then (eventually) a line ending in HTTP/1.x.
            let token_end = first.iter().position(|&b| b == b' ');
            let token = &first[..token_end.unwrap_or(first.len())];
            if token.is_empty() || !token.iter().all(|b| b.is_ascii_uppercase()) {
                return None;
            }
            if let Some(nl) = first.iter().position(|&b| b == b'\n') {
                let line = first[..nl].strip_suffix(b"\r").unwrap_or(&first[..nl]);
                return (token_end.is_some()
                    && (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0")))
                .then_some(Proto::H1);
            }
        }
        if first.len() > MAX_REQUEST_LINE {
            return None;
        }
        match tokio::time::timeout(HELLO_TIMEOUT, client.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => first.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

/// Serve a plain-HTTP flow: every request through the rules and the credential guard.
async fn plain_http<C>(
    egress: &Egress,
    client: C,
    stream: TcpStream,
    mut guard: ConnGuard,
    first: Vec<u8>,
    proto: Proto,
) where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let x = match Exchange::new(
        egress,
        guard.ctx,
        guard.target.clone(),
        false,
        guard.conn.clone(),
    ) {
        Ok(x) => x,
        Err(r) => {
            guard.fail(r.message.trim_end().to_string());
            return;
        }
    };
    let upstream = Counted::new(stream, guard.counters.clone(), ());
    if let Err(e) = http::serve_flow(x, Prefixed::new(first, client), proto, upstream, proto).await
    {
        guard.fail(e);
    }
}

/// Relay bytes both ways. Upstream-to-client bytes flow from the start;
/// client-to-upstream bytes (after `first`, already read) wait for the ClientHello
/// check. A TCP client (the explicit proxy's CONNECT) is split into its owned halves,
/// which need no lock between the two directions.
async fn relay_raw<C>(
    egress: &Egress,
    client: C,
    stream: TcpStream,
    guard: ConnGuard,
    first: Vec<u8>,
) where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut client = Some(client);
    let tcp = (&mut client as &mut dyn Any)
        .downcast_mut::<Option<TcpStream>>()
        .and_then(Option::take);
    match (tcp, client) {
        (Some(tcp), _) => {
            let (cr, cw) = tcp.into_split();
            relay_halves(egress, cr, cw, stream, guard, first).await;
        }
        (None, Some(client)) => {
            let (cr, cw) = tokio::io::split(client);
            relay_halves(egress, cr, cw, stream, guard, first).await;
        }
        (None, None) => {}
    }
}

async fn relay_halves<CR, CW>(
    egress: &Egress,
    mut cr: CR,
    mut cw: CW,
    stream: TcpStream,
    mut guard: ConnGuard,
    first: Vec<u8>,
) where
    CR: AsyncRead + Send + Unpin,
    CW: AsyncWrite + Send + Unpin,
{
    let counters = guard.counters.clone();
    let (mut ur, mut uw) = stream.into_split();

    let down = async {
        let r = pump(&mut ur, &mut cw, &counters.down).await;
        let _ = cw.shutdown().await;
        r.map(|_| ())
    };
    let up = async {
        let mut first = first;
        let mut hello = if first.is_empty() {
            Hello::NeedMore
        } else {
            sni::parse(&first)
        };
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
        if egress.check_hello(&guard, &hello).await.is_err() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "denied by the TLS server name check",
            ));
        }
        uw.write_all(&first).await?;
        counters.up.fetch_add(first.len() as u64, Ordering::Relaxed);
        pump(&mut cr, &mut uw, &counters.up).await?;
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

/// Copy `r` to `w` until `r` ends, adding each byte to `count`. The buffer starts at
/// [`MIN_BUF`] and doubles up to [`MAX_BUF`] while reads keep filling it.
///
/// The bytes are copied through this process on purpose: moving them with splice(2)
/// through a pipe cost the proxy a little less CPU, but the receiving client far more
/// (its `recv` of spliced pages: curl's CPU for a 1 GiB TLS download through the tunnel
/// went from 0.68 s to 0.96 s), and the transfer ran about 10 % slower end to end
/// (docs/benchmarks.md, "CONNECT transfer").
async fn pump<R, W>(r: &mut R, w: &mut W, count: &AtomicU64) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
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
        count.fetch_add(n as u64, Ordering::Relaxed);
        if n == buf.len() && buf.len() < MAX_BUF {
            buf.resize((buf.len() * 2).min(MAX_BUF), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Every byte arrives, in order, whether the reader hands out whole buffers (the
    /// buffer grows) or dribbles (it does not), and the count is exact.
    #[tokio::test]
    async fn pump_relays_every_byte_through_a_buffer() {
        let data = data(3 * MAX_BUF + 12_345);
        for chunk in [1, 1000, MIN_BUF, MAX_BUF * 4] {
            let (tx, rx) = tokio::io::duplex(MAX_BUF * 8);
            let (mut rx, _keep) = tokio::io::split(rx);
            let (_, mut tx) = tokio::io::split(tx);
            let send = data.clone();
            let writer = tokio::spawn(async move {
                for piece in send.chunks(chunk) {
                    tx.write_all(piece).await?;
                }
                tx.shutdown().await
            });
            let mut out = Vec::new();
            let count = AtomicU64::new(0);
            let n = pump(&mut rx, &mut out, &count).await;
            assert_eq!(n.ok(), Some(data.len() as u64), "chunk {chunk}");
            assert_eq!(count.load(Ordering::Relaxed), data.len() as u64);
            assert!(out == data, "chunk {chunk}: bytes differ");
            assert!(matches!(writer.await, Ok(Ok(()))));
        }
    }

    /// Between the halves of two TCP sockets a bulk transfer arrives whole, in order
    /// and counted, and the writer's end of stream ends it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pump_relays_between_tcp_sockets() {
        async fn pair() -> (TcpStream, TcpStream) {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (b, _) = l.accept().await.unwrap();
            (a, b)
        }
        let data = data(64 * 1024 * 1024 + 7);
        // source -> (a_in | relay | b_out) -> sink
        let (mut source, a_in) = pair().await;
        let (b_out, mut sink) = pair().await;
        let send = data.clone();
        let writer = tokio::spawn(async move {
            source.write_all(&send).await?;
            source.shutdown().await
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            sink.read_to_end(&mut got).await.map(|_| got)
        });
        let (mut r, _w1) = a_in.into_split();
        let (_r2, mut w) = b_out.into_split();
        let count = AtomicU64::new(0);
        let n = pump(&mut r, &mut w, &count).await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(count.load(Ordering::Relaxed), data.len() as u64);
        assert!(matches!(writer.await, Ok(Ok(()))));
        let got = reader.await.unwrap().unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes differ");
    }
}
