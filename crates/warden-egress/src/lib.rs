//! Warden's egress: the only way out of a session to the network.
//!
//! **What it owns.** The network policy path ([`Egress`]): canonicalize the
//! destination, decide, resolve a name once the way the host does, check *every*
//! returned address against the special ranges, dial only an address that was
//! checked, and audit it all. Three front ends feed that one path:
//! - [`serve_proxy`]: the explicit proxy on a `TcpListener` (HTTP/1.1 forwarding,
//!   CONNECT with the TLS SNI check, WebSocket upgrades, plain TCP tunnels);
//! - [`serve_dns`]: the session's resolver on a `UdpSocket`, answering allowed names
//!   with synthetic addresses and everything else with NXDOMAIN, never forwarding a
//!   query;
//! - [`serve_tun`]: a TUN device fd with a userspace TCP/IP stack, for programs that
//!   ignore proxy variables, raw IPs, UDP and ICMP.
//!
//! **Streams** (CONNECT tunnels and TUN flows, `tunnel`) are classified by their
//! first bytes: a TLS ClientHello gets the SNI check, then is either relayed end to
//! end or, when the policy wants the host intercepted, terminated (`mitm`); plain
//! HTTP/1.x or h2c is served as HTTP so `[[network.http]]` rules apply to every
//! request (also in TUN flows and CONNECT tunnels); anything else is relayed.
//!
//! **TLS interception and credentials** ([`Interception`] in
//! [`EgressConfig::interception`]): with `[tls] intercept = "needed"` a TLS
//! connection is terminated only for hosts bound to a credential or having
//! `[[network.http]]` rules, with `"all"` for every host. The upstream handshake
//! comes first (verified against [`warden_tls::UpstreamTrust`], offering the
//! client's own ALPN choice of `h2`/`http/1.1`); the client then gets a leaf from the
//! session CA offering exactly the protocol the upstream chose, so both legs speak the
//! same HTTP version (hyper server and client, h1 and h2, streaming bodies, SSE,
//! WebSocket over h1). A failed upstream verification is recorded and answered 502.
//! Per request (`http`): the Host/`:authority` must be the connection's host; the
//! method/path rules; the exfiltration guard (every value, real or placeholder, in
//! every encoding, of each credential *not* bound to the host, in the URL, headers
//! and body: a 403 recorded durably first); then, on TLS only, the bound credentials'
//! placeholders are replaced by their real values (headers including `Basic`, the URL)
//! and configured `header`s set. Responses have real values scrubbed back to
//! placeholders (headers, and the body as it streams).
//!
//! **What it must never do.** Open a path that the policy did not decide: every
//! upstream socket is created in [`Egress::open`] after the decision and the address
//! checks. Fail open: an internal error, an audit log that cannot record, an
//! ambiguous hostname or ClientHello all refuse. Let a deny be seen by the client
//! before it is on disk. Send a DNS query for a name no rule could allow (it sends
//! none at all from the DNS front end). Put a secret in an event: URLs are recorded
//! without their query string. Use `unsafe` (fds arrive as `OwnedFd`).
//!
//! **Audit events** (surface `network`): `connect` (decision; name, `addresses`, the
//! dialled `address`, `conn` id), `close` (same `conn`; `bytes_up`, `bytes_down`,
//! `duration_ms`, `error`), `tls` (SNI check denies), `http` (plain-HTTP request
//! decisions; URL without query), `dns` (every query decision, `qtype`), `udp` /
//! `icmp` / `ip` (dropped packets, rate-limited, with `suppressed`). Denies are
//! recorded durably before the client is answered; allows go through the log's
//! ~100 ms group commit. Every event carries `via` (`proxy`, `tun`, `dns`) and the
//! `client` address. In `mode = "audit"` nothing is blocked and every event has
//! `enforced: false`. Surface `credential`: `exfiltration` (deny: the credential's
//! name as target, `host`, `form`, `which` real/placeholder, `location`, `method`,
//! `url` without query), `inject` and `scrub` (allow; name, host, location). Never a
//! value.

mod dns;
mod egress;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod intercept;
mod io;
mod mitm;
mod proxy;
mod resolve;
pub mod sni;
mod target;
mod tun;
mod tunnel;

pub use dns::{SyntheticPool, answer as dns_answer, serve_dns};
pub use egress::{
    ConnGuard, Ctx, DnsRuling, Egress, EgressConfig, Front, Identity, Refusal, Ruling, Upstream,
};
pub use http::BUFFER_LIMIT;
pub use intercept::{
    Credentials, InterceptError, Interception, Reloaded, SessionCredential, load_declared,
    source_of,
};
pub use io::Counters;
pub use proxy::{serve_connection, serve_proxy};
pub use resolve::{Lookup, Resolve, StaticResolver, SystemResolver};
pub use target::{Target, TargetError, parse_authority};
pub use tun::{TunDevice, serve_tun, serve_tun_until};
/// The crates whose types the interception API takes, re-exported so callers need no
/// direct dependency to name them.
pub use warden_secrets;
pub use warden_tls;

/// Errors of the egress front ends' setup. Connection-level failures are not errors
/// here: they are refusals, recorded and answered to the client.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// could not set up a front end socket or device
    #[error("egress {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}
