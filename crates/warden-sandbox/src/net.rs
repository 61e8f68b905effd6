//! The session's network namespace.
//!
//! Always: a new network namespace with `lo` up, so loopback inside the session works.
//! With [`Network::Egress`](crate::Network::Egress) the init also builds, inside that
//! namespace, the three doors that lead to the parent's egress proxy and nothing else:
//!
//! - a TUN device [`TUN_NAME`] (`IFF_TUN | IFF_NO_PI`) holding [`TUN_V4`] and [`TUN_V6`],
//!   with the IPv4 and IPv6 default routes through it: every packet not for `lo` is
//!   read by the proxy's userspace stack, whatever the program;
//! - a TCP listener on [`PROXY_ADDR`] for programs that honour proxy variables;
//! - a UDP socket on [`DNS_ADDR`], the session's only resolver (`/etc/resolv.conf`).
//!
//! The descriptors go to the parent over the control channel (`SCM_RIGHTS`) and the
//! init closes its copies, so the parent holds the only ones. If the parent (and with
//! it the proxy) dies, the kernel deletes the non-persistent TUN device with its routes
//! and closes the listener: the session is left with loopback and no route, never with
//! a way around the proxy. There is no other interface, no veth, no host route.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Name of the session's TUN device.
pub const TUN_NAME: &str = "warden0";
/// The session's own IPv4 address on the TUN device (what the proxy sees as client).
pub const TUN_V4: Ipv4Addr = Ipv4Addr::new(10, 87, 0, 2);
/// The session's own IPv6 address on the TUN device (outside the proxy's synthetic
/// DNS pool `fd7a:7761:7264::/48`).
pub const TUN_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x7761, 0x7265, 0, 0, 0, 0, 2);
/// MTU of the TUN device; the proxy's stack must use the same.
pub const TUN_MTU: u16 = 1500;
/// The explicit proxy inside the session (`HTTP_PROXY` and friends point here).
pub const PROXY_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3128);
/// The session's MCP gateway, when the caller serves one (`SandboxSpec::mcp_door`).
pub const MCP_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3129);
/// The session's resolver.
pub const DNS_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 53);

/// What the init hands back for the proxy to serve.
#[derive(Debug)]
pub struct NetworkFds {
    /// The TUN device (one raw IP packet per read/write). `None` when it could not be
    /// created (e.g. `/dev/net/tun` not accessible to an unprivileged user): then the
    /// session has no default route, only the proxy and DNS doors.
    pub tun: Option<OwnedFd>,
    /// Listening TCP socket at [`PROXY_ADDR`].
    pub proxy: OwnedFd,
    /// Bound UDP socket at [`DNS_ADDR`].
    pub dns: OwnedFd,
    /// Listening TCP socket at [`MCP_ADDR`], when the spec asked for it.
    pub mcp: Option<OwnedFd>,
}

/// Runs in the init, inside the new network namespace, while it holds `CAP_NET_ADMIN`
/// over it and before the root is pivoted (`/dev/net/tun` and `/proc/sys` are the
/// host's). Returns the descriptors for the parent when `egress` is set; what could not
/// be set up without weakening the boundary goes to `warnings`.
pub(crate) fn setup(
    egress: bool,
    mcp_door: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<NetworkFds>, String> {
    let ctl = Ctl::new(libc::AF_INET).map_err(|e| format!("network control socket: {e}"))?;
    ctl.set_up("lo")
        .map_err(|e| format!("bringing up lo: {e}"))?;
    if !egress {
        return Ok(None);
    }
    let tun = match open_tun() {
        Ok(fd) => {
            route_through_tun(&ctl)?;
            Some(fd)
        }
        Err(e) => {
            // Fail closed, not open: without the device there is no default route, so
            // programs that ignore the proxy variables reach nothing at all.
            let who = rustix::process::getuid().as_raw();
            warnings.push(format!(
                "programs that ignore HTTP_PROXY have no network in this session: the TUN device could not be created ({e}). \
                 Make /dev/net/tun usable by uid {who} (`modprobe tun`; Debian's default mode is 0666: `chmod 0666 /dev/net/tun`)"
            ));
            None
        }
    };
    let proxy = TcpListener::bind(SocketAddr::V4(PROXY_ADDR))
        .map_err(|e| format!("session proxy listener {PROXY_ADDR}: {e}"))?;
    let dns = UdpSocket::bind(SocketAddr::V4(DNS_ADDR))
        .map_err(|e| format!("session DNS socket {DNS_ADDR}: {e}"))?;
    let mcp = if mcp_door {
        let l = TcpListener::bind(SocketAddr::V4(MCP_ADDR))
            .map_err(|e| format!("session MCP listener {MCP_ADDR}: {e}"))?;
        Some(l.into())
    } else {
        None
    };
    Ok(Some(NetworkFds {
        tun,
        proxy: proxy.into(),
        dns: dns.into(),
        mcp,
    }))
}

/// Addresses on the TUN device and the IPv4 and IPv6 default routes through it.
fn route_through_tun(ctl: &Ctl) -> Result<(), String> {
    // A fresh address would be "tentative" for a second of duplicate address detection
    // and unusable as a source meanwhile; there is nobody to collide with on this link.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{TUN_NAME}/accept_dad"),
        "0",
    );
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{TUN_NAME}/router_solicitations"),
        "0",
    );
    let step = |what: &str, r: io::Result<()>| r.map_err(|e| format!("{what}: {e}"));
    step("TUN IPv4 address", ctl.set_addr_v4(TUN_NAME, TUN_V4))?;
    step("bringing up the TUN device", ctl.set_up(TUN_NAME))?;
    let index = ctl
        .index(TUN_NAME)
        .map_err(|e| format!("TUN interface index: {e}"))?;
    step("IPv4 default route", ctl.default_route_v4(TUN_NAME))?;
    let ctl6 = Ctl::new(libc::AF_INET6).map_err(|e| format!("IPv6 control socket: {e}"))?;
    step("TUN IPv6 address", ctl6.set_addr_v6(index, TUN_V6))?;
    step("IPv6 default route", ctl6.default_route_v6(index))
}

fn name_into(dst: &mut [libc::c_char; libc::IFNAMSIZ], name: &str) {
    for (i, b) in name.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
        dst[i] = b as libc::c_char;
    }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    name_into(&mut ifr.ifr_name, name);
    ifr
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

/// Leaves the deletion of the session's TUN device to the kernel's teardown of the
/// session's network namespace instead of the close of its last descriptor.
///
/// Closing the last descriptor of a non-persistent TUN device unregisters the device
/// there and then, under the RTNL lock with RCU grace periods (≈ 20 ms on a loaded
/// machine), and a process cannot finish exiting before its descriptors are closed: every
/// `warden run` would pay it after the command has ended. A persistent device is not
/// unregistered on close; it goes with its network namespace, which the kernel tears down
/// in the background once its last socket is closed (the TUN device has rtnl link ops, so
/// it is deleted, never moved to the host's namespace).
///
/// Call this on a descriptor of the device (`tun`, or a `dup` of it) only once the session
/// has ended. While a session runs its device must stay non-persistent: if the proxy's
/// descriptor is closed, the device and its routes go with it (no route out, see the
/// module documentation).
pub fn defer_tun_teardown(tun: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer argument; no memory is passed.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) })
}

fn open_tun() -> io::Result<OwnedFd> {
    // SAFETY: open of a constant path; the result is checked.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    check(fd)?;
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr = ifreq(TUN_NAME);
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and writes back the name into) the ifreq we own.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut ifr) })?;
    Ok(fd)
}

/// A datagram socket used only for interface and route ioctls.
struct Ctl(OwnedFd);

/// `struct in6_ifreq` (linux/ipv6.h).
#[repr(C)]
struct In6Ifreq {
    addr: libc::in6_addr,
    prefixlen: u32,
    ifindex: libc::c_int,
}

/// `struct in6_rtmsg` (linux/ipv6_route.h).
#[repr(C)]
struct In6Rtmsg {
    dst: libc::in6_addr,
    src: libc::in6_addr,
    gateway: libc::in6_addr,
    kind: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

impl Ctl {
    fn new(family: libc::c_int) -> io::Result<Ctl> {
        // SAFETY: plain socket creation, checked.
        let s = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        check(s)?;
        // SAFETY: a fresh descriptor we own.
        Ok(Ctl(unsafe { OwnedFd::from_raw_fd(s) }))
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn set_up(&self, name: &str) -> io::Result<()> {
        let mut ifr = ifreq(name);
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
        unsafe {
            check(libc::ioctl(self.fd(), libc::SIOCGIFFLAGS, &mut ifr))?;
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            check(libc::ioctl(self.fd(), libc::SIOCSIFFLAGS, &ifr))
        }
    }

    fn index(&self, name: &str) -> io::Result<libc::c_int> {
        let mut ifr = ifreq(name);
        // SAFETY: SIOCGIFINDEX fills the ifreq we own.
        check(unsafe { libc::ioctl(self.fd(), libc::SIOCGIFINDEX, &mut ifr) })?;
        // SAFETY: the kernel filled the ifindex member.
        Ok(unsafe { ifr.ifr_ifru.ifru_ifindex })
    }

    fn set_addr_v4(&self, name: &str, addr: Ipv4Addr) -> io::Result<()> {
        let mut ifr = ifreq(name);
        let sin = sockaddr_in(addr);
        // SAFETY: sockaddr_in fits in the sockaddr slot of the union (16 bytes each).
        unsafe {
            std::ptr::write(
                std::ptr::addr_of_mut!(ifr.ifr_ifru.ifru_addr).cast::<libc::sockaddr_in>(),
                sin,
            );
            check(libc::ioctl(self.fd(), libc::SIOCSIFADDR, &ifr))?;
            std::ptr::write(
                std::ptr::addr_of_mut!(ifr.ifr_ifru.ifru_netmask).cast::<libc::sockaddr_in>(),
                sockaddr_in(Ipv4Addr::BROADCAST),
            );
            check(libc::ioctl(self.fd(), libc::SIOCSIFNETMASK, &ifr))
        }
    }

    fn set_addr_v6(&self, ifindex: libc::c_int, addr: Ipv6Addr) -> io::Result<()> {
        let req = In6Ifreq {
            addr: libc::in6_addr {
                s6_addr: addr.octets(),
            },
            prefixlen: 128,
            ifindex,
        };
        // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads an in6_ifreq we own.
        check(unsafe { libc::ioctl(self.fd(), libc::SIOCSIFADDR, &req) })
    }

    fn default_route_v4(&self, name: &str) -> io::Result<()> {
        let mut dev = [0 as libc::c_char; libc::IFNAMSIZ];
        name_into(&mut dev, name);
        // SAFETY: rtentry is plain data; zeroed is valid.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        // SAFETY: sockaddr_in fits in a sockaddr.
        unsafe {
            std::ptr::write(
                std::ptr::addr_of_mut!(rt.rt_dst).cast::<libc::sockaddr_in>(),
                sockaddr_in(Ipv4Addr::UNSPECIFIED),
            );
            std::ptr::write(
                std::ptr::addr_of_mut!(rt.rt_genmask).cast::<libc::sockaddr_in>(),
                sockaddr_in(Ipv4Addr::UNSPECIFIED),
            );
        }
        rt.rt_flags = libc::RTF_UP;
        rt.rt_dev = dev.as_mut_ptr();
        // SAFETY: SIOCADDRT reads the rtentry and the device name it points to, both
        // alive for the call.
        check(unsafe { libc::ioctl(self.fd(), libc::SIOCADDRT, &rt) })
    }

    fn default_route_v6(&self, ifindex: libc::c_int) -> io::Result<()> {
        let zero = libc::in6_addr { s6_addr: [0; 16] };
        let rt = In6Rtmsg {
            dst: zero,
            src: zero,
            gateway: zero,
            kind: 0,
            dst_len: 0,
            src_len: 0,
            metric: 1,
            info: 0,
            flags: libc::RTF_UP as u32,
            ifindex,
        };
        // SAFETY: SIOCADDRT on an AF_INET6 socket reads an in6_rtmsg we own.
        check(unsafe { libc::ioctl(self.fd(), libc::SIOCADDRT, &rt) })
    }
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    }
}
