//! The per-session certificate authority and its leaf cache.

use crate::TlsError;
use rand::Rng;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm, SigningKey,
};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;
use time::OffsetDateTime;
use zeroize::Zeroize;

/// How far back certificates are dated, so a client whose clock is slightly behind
/// the proxy's still accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);

/// One day: the CA outlives the expected session by this much.
const ONE_DAY: Duration = Duration::from_secs(24 * 3600);

/// Which application protocols a minted server config offers. The proxy picks the one
/// that mirrors what the upstream negotiated, so the client never ends up speaking h2
/// to a proxy leg whose upstream only speaks HTTP/1.1 (or the reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// Offer `h2` then `http/1.1` (the client chooses).
    H2AndHttp1,
    /// Offer only `h2`.
    H2,
    /// Offer only `http/1.1`.
    Http1,
    /// No ALPN extension (the upstream negotiated none).
    None,
}

impl Alpn {
    /// The choice that mirrors an upstream's negotiated protocol: `h2` → [`Alpn::H2`],
    /// `http/1.1` → [`Alpn::Http1`], nothing → [`Alpn::None`]. Anything else (a
    /// protocol the proxy does not interpret) also maps to `None`.
    pub fn from_negotiated(protocol: Option<&[u8]>) -> Self {
        match protocol {
            Some(b"h2") => Self::H2,
            Some(b"http/1.1") => Self::Http1,
            _ => Self::None,
        }
    }

    /// The ALPN protocol ids to offer, in preference order.
    pub fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Self::H2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Self::H2 => vec![b"h2".to_vec()],
            Self::Http1 => vec![b"http/1.1".to_vec()],
            Self::None => Vec::new(),
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Self::H2AndHttp1 => 0,
            Self::H2 => 1,
            Self::Http1 => 2,
            Self::None => 3,
        }
    }
}

/// Options for [`SessionCa::with_options`].
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// How long the CA (and so every leaf) stays valid from now. Default: one day.
    pub lifetime: Duration,
    /// How many hosts keep a cached leaf; the least recently used is dropped beyond
    /// this. Default: 1024.
    pub cache_capacity: usize,
}

impl CaOptions {
    /// Validity for a session expected to last `expected`: that plus one day.
    pub fn for_session(expected: Duration) -> Self {
        Self {
            lifetime: expected.saturating_add(ONE_DAY),
            ..Self::default()
        }
    }
}

impl Default for CaOptions {
    fn default() -> Self {
        Self {
            lifetime: ONE_DAY,
            cache_capacity: 1024,
        }
    }
}

/// The CA's key pair. Owned by the [`Issuer`] inside [`SessionCa`] and by nothing else;
/// its PKCS#8 serialization is zeroized on drop. Deliberately not `Clone`.
struct CaKey(KeyPair);

impl PublicKeyData for CaKey {
    fn subject_public_key_info(&self) -> Vec<u8> {
        self.0.subject_public_key_info()
    }

    fn der_bytes(&self) -> &[u8] {
        PublicKeyData::der_bytes(&self.0)
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        PublicKeyData::algorithm(&self.0)
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

impl Drop for CaKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A per-session certificate authority, made in memory. Share it as `Arc<SessionCa>`;
/// every method takes `&self` and is safe to call from many tasks at once.
///
/// Its private key has no accessor of any kind: only [`SessionCa::cert_pem`] (the
/// public certificate) leaves this type.
pub struct SessionCa {
    id: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, CaKey>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    provider: Arc<CryptoProvider>,
    cache: LeafCache,
}

impl fmt::Debug for SessionCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCa")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .field("cached_hosts", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl SessionCa {
    /// A new CA valid for one day, with the default leaf cache.
    pub fn new() -> Result<Self, TlsError> {
        Self::with_options(CaOptions::default())
    }

    /// A new CA with explicit validity and cache size.
    pub fn with_options(options: CaOptions) -> Result<Self, TlsError> {
        let gen_err = |source| TlsError::Generate {
            what: "the session CA".to_string(),
            source,
        };
        let mut rng = rand::rng();
        let id = format!("{:08x}", rng.random::<u32>());
        let now = OffsetDateTime::now_utc();
        let not_before = now - BACKDATE;
        let not_after = now + options.lifetime;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Warden session CA {id}"));
        dn.push(DnType::OrganizationName, "Warden");
        params.distinguished_name = dn;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial(&mut rng));
        // Path length 0: it can sign leaves, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = CaKey(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let cert_der = cert.der().clone();
        let cert_pem = cert.pem();
        let issuer = Issuer::new(params, key);

        Ok(Self {
            id,
            cert_der,
            cert_pem,
            issuer,
            not_before,
            not_after,
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            cache: LeafCache::new(options.cache_capacity),
        })
    }

    /// The short random id in the CA's common name ("Warden session CA <id>").
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The CA certificate in PEM. Public: this is what the session trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// When the CA and every leaf it minted stop being valid.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// A server config presenting a leaf for `host` (a DNS name, an IP literal, or a
    /// bracketed IPv6 literal), signed by this CA and offering `alpn`.
    ///
    /// The leaf is minted on first use and cached per canonical host (lowercase,
    /// trailing dot removed); each `alpn` variant's config is built once per host. The
    /// cache is a read-mostly `RwLock<HashMap>`: a hit takes only the read lock and
    /// bumps an atomic recency stamp, so concurrent handshakes to known hosts never
    /// serialize; a miss mints outside any lock and takes the write lock only to
    /// insert (and, when full, evict the least recently used host).
    pub fn server_config_for(&self, host: &str, alpn: Alpn) -> Result<Arc<ServerConfig>, TlsError> {
        let host = canonical_host(host)?;
        let leaf = match self.cache.get(&host) {
            Some(leaf) => leaf,
            None => {
                let key = self.mint(&host)?;
                self.cache.insert(host, key)
            }
        };
        leaf.config(alpn, &self.provider)
    }

    /// How many hosts currently have a cached leaf.
    pub fn cached_hosts(&self) -> usize {
        self.cache.len()
    }

    fn mint(&self, host: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let gen_err = |source| TlsError::Generate {
            what: host.to_string(),
            source,
        };
        let san =
            match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(Ia5String::try_from(host).map_err(|_| {
                    TlsError::InvalidHost {
                        host: host.to_string(),
                        reason: "not an ASCII name (convert IDN names to punycode first)",
                    }
                })?),
            };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // The CN is informational (clients match on the SAN); keep it within the
        // X.520 upper bound of 64 characters.
        let cn: String = host.chars().take(64).collect();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![san];
        let now = OffsetDateTime::now_utc();
        params.not_before = std::cmp::max(now - BACKDATE, self.not_before);
        params.not_after = self.not_after;
        params.serial_number = Some(random_serial(&mut rand::rng()));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;

        let mut key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        key.zeroize();
        let signer = self.provider.key_provider.load_private_key(der)?;
        Ok(Arc::new(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            signer,
        )))
    }
}

/// A positive 127-bit random serial number.
fn random_serial(rng: &mut impl Rng) -> SerialNumber {
    let mut bytes: [u8; 16] = rng.random();
    bytes[0] &= 0x7f;
    // Never all-zero in the top byte and positive: a leading zero byte is fine, DER
    // encoding keeps it as an INTEGER.
    SerialNumber::from_slice(&bytes)
}

/// Lowercase, without a trailing dot or IPv6 brackets; rejects what cannot be a SAN.
fn canonical_host(host: &str) -> Result<String, TlsError> {
    let invalid = |reason| TlsError::InvalidHost {
        host: host.to_string(),
        reason,
    };
    let mut h = host.trim_end_matches('.');
    if let Some(inner) = h.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        h = inner;
    }
    if h.is_empty() {
        return Err(invalid("empty host"));
    }
    if h.len() > 253 {
        return Err(invalid("longer than 253 characters"));
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    if !h
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(invalid(
            "only letters, digits, '-', '_' and '.' may appear (convert IDN names to punycode first)",
        ));
    }
    if h.split('.').any(str::is_empty) {
        return Err(invalid("empty label"));
    }
    Ok(h.to_ascii_lowercase())
}

/// A cached leaf: its key and certificate chain, and one server config per ALPN choice.
struct Leaf {
    key: Arc<CertifiedKey>,
    configs: [OnceLock<Arc<ServerConfig>>; 4],
    last_used: AtomicU64,
}

impl Leaf {
    fn config(
        &self,
        alpn: Alpn,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let slot = &self.configs[alpn.index()];
        if let Some(config) = slot.get() {
            return Ok(config.clone());
        }
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(self.key.clone())));
        config.alpn_protocols = alpn.protocols();
        let config = Arc::new(config);
        // Two racing callers may both build; the first stored wins, both are valid.
        Ok(slot.get_or_init(|| config).clone())
    }
}

/// Bounded, read-mostly host → leaf map with least-recently-used eviction.
struct LeafCache {
    map: RwLock<HashMap<String, Arc<Leaf>>>,
    clock: AtomicU64,
    capacity: usize,
}

impl LeafCache {
    fn new(capacity: usize) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            clock: AtomicU64::new(0),
            capacity: capacity.max(1),
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn len(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn get(&self, host: &str) -> Option<Arc<Leaf>> {
        let leaf = self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(host)
            .cloned()?;
        leaf.last_used.store(self.tick(), Ordering::Relaxed);
        Some(leaf)
    }

    fn insert(&self, host: String, key: Arc<CertifiedKey>) -> Arc<Leaf> {
        let stamp = self.tick();
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = map.get(&host) {
            // Another task minted this host meanwhile; keep one leaf per host.
            existing.last_used.store(stamp, Ordering::Relaxed);
            return existing.clone();
        }
        while map.len() >= self.capacity {
            let oldest = map
                .iter()
                .min_by_key(|(_, leaf)| leaf.last_used.load(Ordering::Relaxed))
                .map(|(h, _)| h.clone());
            match oldest {
                Some(h) => {
                    map.remove(&h);
                }
                None => break,
            }
        }
        let leaf = Arc::new(Leaf {
            key,
            configs: Default::default(),
            last_used: AtomicU64::new(stamp),
        });
        map.insert(host, leaf.clone());
        leaf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_hosts() {
        assert_eq!(
            canonical_host("API.Example.COM.").ok().as_deref(),
            Some("api.example.com")
        );
        assert_eq!(canonical_host("[::1]").ok().as_deref(), Some("::1"));
        assert_eq!(
            canonical_host("127.0.0.1").ok().as_deref(),
            Some("127.0.0.1")
        );
        for bad in [
            "",
            ".",
            "a..b",
            "a b",
            "exa\0mple.com",
            "user@host",
            "bücher.de",
        ] {
            assert!(canonical_host(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn alpn_mirrors_upstream() {
        assert_eq!(Alpn::from_negotiated(Some(b"h2")), Alpn::H2);
        assert_eq!(Alpn::from_negotiated(Some(b"http/1.1")), Alpn::Http1);
        assert_eq!(Alpn::from_negotiated(None), Alpn::None);
        assert_eq!(Alpn::H2AndHttp1.protocols().len(), 2);
    }
}
