//! The DNS front end: the session's only resolver.
//!
//! No query ever leaves the machine from here. A name that some rule could allow is
//! answered with a *synthetic* address from a reserved pool, remembered so that the
//! TUN front end can map a connection to that address back to the name; the real
//! address is resolved by [`crate::Egress::open`] when (and only when) an allowed
//! connection is dialled. A name no rule could allow gets NXDOMAIN. Only A and AAAA
//! are answered; other types of an allowed name get an empty NOERROR.
//!
//! The pools: `198.18.0.0/15` (RFC 2544 benchmarking, never routed on the Internet)
//! and `fd7a:7761:7264::/48` (a ULA prefix; "wrd" in its middle groups). One index
//! per name gives both its A and AAAA, so a name has one identity in both families.

use crate::egress::{Ctx, DnsRuling, Egress, Front};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use tokio::net::UdpSocket;
use warden_policy::host::canonical_host;

/// First address of the IPv4 pool, 198.18.0.0.
const V4_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
/// Size of the pools: a /15.
const POOL_SIZE: u32 = 1 << 17;
/// The IPv6 pool prefix, fd7a:7761:7264::/48.
const V6_BASE: u128 = 0xfd7a_7761_7264_u128 << 80;
/// TTL of synthetic answers: short, so a recycled address is not cached for long.
const TTL: u32 = 60;

#[derive(Debug, Default)]
struct PoolInner {
    by_name: HashMap<String, u32>,
    by_index: HashMap<u32, String>,
    next: u32,
}

/// Synthetic addresses for names, and back.
///
/// A plain `RwLock`: it is touched once per DNS answer and once per new TUN
/// connection, never per packet or byte, and critical sections are a map lookup.
#[derive(Debug, Default)]
pub struct SyntheticPool {
    inner: RwLock<PoolInner>,
}

impl SyntheticPool {
    /// The pool index for `name`, allocating one (and recycling the oldest) if
    /// needed. Index 0 (the network address) is never used.
    pub fn index_for(&self, name: &str) -> u32 {
        if let Some(&i) = self
            .inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_name
            .get(name)
        {
            return i;
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = inner.by_name.get(name) {
            return i;
        }
        let idx = inner.next % (POOL_SIZE - 2) + 1;
        inner.next = idx;
        if let Some(old) = inner.by_index.remove(&idx) {
            inner.by_name.remove(&old);
        }
        inner.by_index.insert(idx, name.to_string());
        inner.by_name.insert(name.to_string(), idx);
        idx
    }

    /// The synthetic IPv4 address of `name`.
    pub fn v4_for(&self, name: &str) -> Ipv4Addr {
        Ipv4Addr::from(V4_BASE + self.index_for(name))
    }

    /// The synthetic IPv6 address of `name`.
    pub fn v6_for(&self, name: &str) -> Ipv6Addr {
        Ipv6Addr::from(V6_BASE + u128::from(self.index_for(name)))
    }

    /// Is `ip` in one of the pools (whether or not it is mapped)?
    pub fn contains(ip: IpAddr) -> bool {
        Self::index_of(ip).is_some()
    }

    fn index_of(ip: IpAddr) -> Option<u32> {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let n = u32::from(v4);
                (V4_BASE..V4_BASE + POOL_SIZE)
                    .contains(&n)
                    .then(|| n - V4_BASE)
            }
            IpAddr::V6(v6) => {
                let n = u128::from(v6);
                (n >> 80 == V6_BASE >> 80 && (n & ((1u128 << 80) - 1)) < u128::from(POOL_SIZE))
                    .then(|| u32::try_from(n & ((1u128 << 80) - 1)).unwrap_or(0))
            }
        }
    }

    /// The name a synthetic address stands for, if it is mapped.
    pub fn name_of(&self, ip: IpAddr) -> Option<String> {
        let idx = Self::index_of(ip)?;
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_index
            .get(&idx)
            .cloned()
    }
}

/// Answer one DNS query (a UDP payload). `None`: not even a header to answer to.
pub async fn answer(egress: &Egress, query: &[u8], client: Option<SocketAddr>) -> Option<Vec<u8>> {
    let ctx = Ctx {
        front: Front::Dns,
        client,
    };
    let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => return encode(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)),
    };
    if msg.metadata.message_type != MessageType::Query {
        return None;
    }
    if msg.metadata.op_code != OpCode::Query {
        return encode(Message::error_msg(
            id,
            msg.metadata.op_code,
            ResponseCode::NotImp,
        ));
    }
    let [q] = msg.queries.as_slice() else {
        return encode(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr));
    };
    let mut resp = Message::response(id, OpCode::Query);
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    if q.query_class() != DNSClass::IN {
        resp.metadata.response_code = ResponseCode::NotImp;
        return encode(resp);
    }
    let qtype = q.query_type();
    let written = q.name().to_ascii();
    let name = match canonical_host(&written) {
        Ok(n) => n,
        Err(_) => {
            // Not a name any rule could match; say so without asking anyone.
            let _ = egress
                .reject("dns", &written, "invalid name in DNS query", ctx)
                .await;
            resp.metadata.response_code = ResponseCode::NXDomain;
            return encode(resp);
        }
    };
    match egress.dns_decide(&name, &qtype.to_string(), ctx).await {
        DnsRuling::Fail => {
            resp.metadata.response_code = ResponseCode::ServFail;
        }
        DnsRuling::NxDomain => {
            resp.metadata.response_code = ResponseCode::NXDomain;
        }
        DnsRuling::Answer => {
            let pool = &egress.inner.pool;
            let rdata = match qtype {
                RecordType::A => Some(RData::A(A(pool.v4_for(&name)))),
                RecordType::AAAA => Some(RData::AAAA(AAAA(pool.v6_for(&name)))),
                _ => None,
            };
            if let Some(rdata) = rdata {
                resp.add_answer(Record::from_rdata(q.name().clone(), TTL, rdata));
            }
        }
    }
    encode(resp)
}

fn encode(msg: Message) -> Option<Vec<u8>> {
    msg.to_vec().ok()
}

/// Serve DNS on `socket` until it fails. Each query is answered on its own task, so
/// a durable deny record never delays other queries.
pub async fn serve_dns(egress: Egress, socket: UdpSocket) -> std::io::Result<()> {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) if is_transient(&e) => continue,
            Err(e) => return Err(e),
        };
        let query = buf[..n].to_vec();
        let egress = egress.clone();
        let socket = socket.clone();
        tokio::spawn(async move {
            if let Some(resp) = answer(&egress, &query, Some(peer)).await {
                let _ = socket.send_to(&resp, peer).await;
            }
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_maps_both_ways() {
        let pool = SyntheticPool::default();
        let a = pool.v4_for("a.test");
        let b = pool.v4_for("b.test");
        assert_ne!(a, b);
        assert_eq!(pool.v4_for("a.test"), a);
        assert_eq!(pool.name_of(IpAddr::V4(a)).as_deref(), Some("a.test"));
        let a6 = pool.v6_for("a.test");
        assert_eq!(pool.name_of(IpAddr::V6(a6)).as_deref(), Some("a.test"));
        assert!(a6.to_string().starts_with("fd7a:7761:7264:"), "{a6}");
        assert!(a.to_string().starts_with("198.18."), "{a}");
        assert_eq!(
            pool.name_of("198.19.255.254".parse().unwrap_or(IpAddr::V4(a))),
            None
        );
        assert!(!SyntheticPool::contains(
            "198.20.0.1".parse().unwrap_or(IpAddr::V4(a))
        ));
    }
}
