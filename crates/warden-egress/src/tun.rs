//! The TUN front end: every packet of the session that is not for `lo` — programs
//! that ignore proxy variables, raw IPs, UDP, ICMP — arrives here as IP packets.
//!
//! A userspace TCP/IP stack (`ipstack`) terminates TCP; each flow goes through the
//! same [`Egress::open`] path as the explicit proxy, with its destination read as:
//! a synthetic address from the DNS pool → the name it was handed out for; any other
//! address → that address (IP rules). The TLS ClientHello check then runs as for
//! CONNECT. UDP to port 53 is answered by the DNS front end (no query leaves);
//! other UDP and all non-TCP/UDP packets (ICMP) are dropped and recorded
//! (rate-limited).
//!
//! Note that the stack completes the TCP handshake before the decision, so a denied
//! flow sees an accepted connection that is then closed; nothing reaches upstream.

use crate::dns::{self, SyntheticPool};
use crate::egress::{Ctx, Egress, Front};
use crate::target::Target;
use crate::tunnel;
use ipstack::{IpStack, IpStackConfig, IpStackStream};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use warden_policy::host::RequestHost;

/// A TUN device fd (IFF_TUN | IFF_NO_PI: one raw IP packet per read and write) as an
/// async stream.
pub struct TunDevice {
    fd: AsyncFd<OwnedFd>,
    /// Set, with the error, when a read fails for good (the device or its namespace
    /// went away). The stack retries failed reads in a tight loop, so after that the
    /// device reports nothing more (pending forever) and [`serve_tun`] returns.
    dead: Arc<Dead>,
}

#[derive(Default)]
struct Dead {
    error: std::sync::OnceLock<String>,
    notify: tokio::sync::Notify,
}

impl TunDevice {
    /// Wrap `fd`, making it non-blocking.
    pub fn new(fd: OwnedFd) -> io::Result<TunDevice> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        // `AsyncFd::new` is deprecated because an arbitrary `AsRawFd` may hand out a
        // different or closed fd over its lifetime. An `OwnedFd` cannot: it owns one
        // fd and closes it only on drop, after the `AsyncFd` deregistered it. The
        // replacement, `AsyncFd::register`, is `unsafe`, which this crate forbids.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(TunDevice {
            fd,
            dead: Arc::new(Dead::default()),
        })
    }
}

impl AsyncRead for TunDevice {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.dead.error.get().is_some() {
            return Poll::Pending;
        }
        loop {
            let mut guard = match ready!(self.fd.poll_read_ready(cx)) {
                Ok(g) => g,
                Err(e) => return self.die(e),
            };
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut *unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(0)) => return self.die(io::Error::other("TUN device closed")),
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return self.die(e),
                Err(_would_block) => continue,
            }
        }
    }
}

impl TunDevice {
    fn die(&self, e: io::Error) -> Poll<io::Result<()>> {
        let _ = self.dead.error.set(e.to_string());
        self.dead.notify.notify_one();
        Poll::Pending
    }
}

impl AsyncWrite for TunDevice {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Serve the TUN device `fd` (MTU `mtu`, which must match the device's) until the
/// device fails. Needs a multi-threaded tokio runtime. See [`serve_tun_until`] for
/// shutting it down before the runtime goes away.
pub async fn serve_tun(egress: Egress, fd: OwnedFd, mtu: u16) -> io::Result<()> {
    serve_tun_until(egress, fd, mtu, std::future::pending()).await
}

/// Like [`serve_tun`], and stops when `stop` completes: every flow is ended, then
/// the stack dropped, and only then does this return.
///
/// Callers must let this return before dropping the runtime: `ipstack` blocks in
/// place in the destructor of a TCP flow until the flow's own task finishes, which
/// never happens while the runtime is shutting down (a flow still alive at runtime
/// shutdown hangs it). Ending flows here, while the runtime runs, avoids that.
pub async fn serve_tun_until(
    egress: Egress,
    fd: OwnedFd,
    mtu: u16,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let device = TunDevice::new(fd)?;
    let dead = device.dead.clone();
    let mut config = IpStackConfig::default();
    config.mtu_unchecked(mtu);
    let mut stack = IpStack::new(config, device);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut flows = tokio::task::JoinSet::new();
    let spawn = |flows: &mut tokio::task::JoinSet<()>,
                 flow: Pin<Box<dyn Future<Output = ()> + Send>>| {
        let mut rx = stop_rx.clone();
        flows.spawn(async move {
            tokio::select! {
                () = flow => {}
                _ = rx.wait_for(|stopped| *stopped) => {}
            }
        });
    };
    tokio::pin!(stop);
    let result = loop {
        let stream = tokio::select! {
            s = stack.accept() => match s {
                Ok(s) => s,
                Err(e) => break Err(io::Error::other(e.to_string())),
            },
            () = dead.notify.notified() => {
                let why = dead.error.get().cloned().unwrap_or_default();
                break Err(io::Error::other(format!("TUN device failed: {why}")));
            }
            () = &mut stop => break Ok(()),
            Some(_) = flows.join_next(), if !flows.is_empty() => continue,
        };
        match stream {
            IpStackStream::Tcp(tcp) => {
                let egress = egress.clone();
                spawn(
                    &mut flows,
                    Box::pin(async move {
                        let client = tcp.local_addr();
                        let dst = tcp.peer_addr();
                        let target = target_for(&egress, dst);
                        let ctx = Ctx {
                            front: Front::Tun,
                            client: Some(client),
                        };
                        // However the flow ends (refused, relayed, served as HTTP, or
                        // handed to an upgrade), the client's side is closed at once
                        // (FIN): a flow of the stack that is merely dropped leaves the
                        // client waiting for its own timeout.
                        let (back, returned) = tokio::sync::oneshot::channel();
                        let client = Returning {
                            inner: Some(tcp),
                            back: Some(back),
                        };
                        if let Ok(upstream) = egress.open(&target, ctx).await {
                            tunnel::relay(&egress, client, upstream).await;
                        } else {
                            drop(client);
                        }
                        if let Ok(mut tcp) = returned.await {
                            let _ = tokio::time::timeout(
                                std::time::Duration::from_secs(5),
                                tcp.shutdown(),
                            )
                            .await;
                        }
                    }),
                );
            }
            IpStackStream::Udp(mut udp) => {
                let egress = egress.clone();
                spawn(
                    &mut flows,
                    Box::pin(async move {
                        let client = udp.local_addr();
                        let dst = udp.peer_addr();
                        if dst.port() != 53 {
                            egress.record_dropped(
                                "udp",
                                client,
                                dst,
                                "UDP is not forwarded (only DNS, answered by Warden)",
                            );
                            return;
                        }
                        // DNS to any address is answered by Warden itself.
                        let mut buf = vec![0u8; 4096];
                        while let Ok(n) = udp.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            if let Some(resp) = dns::answer(&egress, &buf[..n], Some(client)).await
                                && udp.write_all(&resp).await.is_err()
                            {
                                break;
                            }
                        }
                    }),
                );
            }
            IpStackStream::UnknownTransport(pkt) => {
                let proto = pkt.ip_protocol();
                let action =
                    if proto == ipstack::IpNumber::ICMP || proto == ipstack::IpNumber::IPV6_ICMP {
                        "icmp"
                    } else {
                        "ip"
                    };
                egress.record_dropped(
                    action,
                    SocketAddr::new(pkt.src_addr(), 0),
                    SocketAddr::new(pkt.dst_addr(), 0),
                    &format!("IP protocol {} is not forwarded", u8::from(proto)),
                );
            }
            IpStackStream::UnknownNetwork(_) => {}
        }
    };
    let _ = stop_tx.send(true);
    while flows.join_next().await.is_some() {}
    drop(stack);
    result
}

/// A client stream that goes back to its flow when whoever holds it is done, so the
/// flow can close it properly (see the TCP case of [`serve_tun_until`]).
struct Returning<T> {
    inner: Option<T>,
    back: Option<tokio::sync::oneshot::Sender<T>>,
}

impl<T> Returning<T> {
    fn get(&mut self) -> io::Result<&mut T> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<T> Drop for Returning<T> {
    fn drop(&mut self) {
        if let (Some(inner), Some(back)) = (self.inner.take(), self.back.take()) {
            let _ = back.send(inner);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Returning<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Returning<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Done once the FIN is on its way: the stack's own shutdown completes only when the
    /// client has closed too, and a client waiting for end-of-file (an HTTP/1.1
    /// `Connection: close` exchange) would wait for it forever. The flow finishes the
    /// close when the stream comes back.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get() {
            Ok(s) => match Pin::new(s).poll_shutdown(cx) {
                Poll::Pending => Poll::Ready(Ok(())),
                done => done,
            },
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// The destination of a captured flow: the name behind a synthetic address, or the
/// address itself. An unmapped pool address stays an address (and the IP rules,
/// which never allow the benchmarking range unless the policy names it, decide).
fn target_for(egress: &Egress, dst: SocketAddr) -> Target {
    let ip: IpAddr = dst.ip().to_canonical();
    if SyntheticPool::contains(ip)
        && let Some(name) = egress.inner.pool.name_of(ip)
    {
        return Target::new(RequestHost::Name(name), dst.port());
    }
    Target::ip(ip, dst.port())
}
