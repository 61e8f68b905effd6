//! Name resolution for dialing: once per connection, the way the host resolves
//! (`/etc/hosts`, then the configured resolvers, via the C library's `getaddrinfo`
//! and so nsswitch), with a static map for tests and for callers that pin names.
//!
//! Why `getaddrinfo` and not a DNS client library: SPEC §3 says names resolve "the way
//! the host resolves them", and only the C library honours everything a host may
//! configure (nsswitch, systemd-resolved, `options` in resolv.conf). It runs on
//! tokio's blocking pool, so a slow resolver never stalls the proxy.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;

/// A boxed future of a lookup's addresses.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Turns a canonical name into addresses. Called at most once per connection; the
/// caller checks every returned address and dials only one of those.
pub trait Resolve: Send + Sync + 'static {
    fn resolve<'a>(&'a self, name: &'a str, port: u16) -> Lookup<'a>;
}

/// The host's resolver (`getaddrinfo`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str, port: u16) -> Lookup<'a> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((name, port)).await?;
            let mut out: Vec<IpAddr> = Vec::new();
            for a in addrs {
                let ip = a.ip().to_canonical();
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            Ok(out)
        })
    }
}

/// Fixed answers for some names, the host's resolver for the rest (or nothing, with
/// [`StaticResolver::only`]). Names are matched in canonical form.
#[derive(Debug, Default, Clone)]
pub struct StaticResolver {
    map: HashMap<String, Vec<IpAddr>>,
    fallback: bool,
}

impl StaticResolver {
    /// Static answers first, then the host's resolver.
    pub fn with_fallback() -> StaticResolver {
        StaticResolver {
            map: HashMap::new(),
            fallback: true,
        }
    }

    /// Static answers only; any other name does not resolve.
    pub fn only() -> StaticResolver {
        StaticResolver::default()
    }

    /// Answer `name` with `addrs`.
    pub fn insert(mut self, name: &str, addrs: Vec<IpAddr>) -> StaticResolver {
        self.map.insert(name.to_ascii_lowercase(), addrs);
        self
    }
}

impl Resolve for StaticResolver {
    fn resolve<'a>(&'a self, name: &'a str, port: u16) -> Lookup<'a> {
        Box::pin(async move {
            if let Some(addrs) = self.map.get(name) {
                return Ok(addrs.iter().map(|ip| ip.to_canonical()).collect());
            }
            if self.fallback {
                return SystemResolver.resolve(name, port).await;
            }
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name} does not resolve"),
            ))
        })
    }
}
