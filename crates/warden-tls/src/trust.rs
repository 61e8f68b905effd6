//! Trust toward upstreams, and the CA bundle a session trusts.

use crate::store::{self, SystemPem};
use crate::{Alpn, SessionCa, TlsError};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The roots the proxy trusts toward real servers: the host's system store (parsed by
/// `rustls-native-certs` from the paths `store::store_paths` chooses: `SSL_CERT_FILE`/
/// `SSL_CERT_DIR` when set, else the distribution's bundle file) plus
/// `tls.extra_roots`. The session CA is never among them, so a minted leaf can never be
/// mistaken for a real upstream.
///
/// Load once per session; [`UpstreamTrust::client_config`] builds each ALPN variant
/// once and then hands out clones of the same `Arc`. Parsing the system store (≈ 150
/// certificates) is only needed for the first upstream handshake, and a session's
/// trust bundle does not need it at all: [`UpstreamTrust::deferred`] reads the store
/// as text for the bundle when it is asked for (and checks the extra roots), and
/// parses the roots on first use.
pub struct UpstreamTrust {
    extra_roots: Vec<PathBuf>,
    /// The parsed roots: set by [`UpstreamTrust::load`], else on first use.
    roots: OnceLock<Result<Roots, Arc<TlsError>>>,
    /// What a session bundle is made of (set once read, or failed to be).
    parts: OnceLock<Result<BundleParts, Arc<TlsError>>>,
    configs: [OnceLock<Arc<ClientConfig>>; 4],
}

/// What a load produced.
struct Roots {
    system: Vec<CertificateDer<'static>>,
    extra: Vec<CertificateDer<'static>>,
    store: Arc<RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// What the bundles are made of: the system store as text and the extra roots.
struct BundleParts {
    system: SystemPem,
    extra: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for UpstreamTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("UpstreamTrust");
        match self.roots.get() {
            Some(Ok(r)) => d
                .field("system_roots", &r.system.len())
                .field("extra_roots", &r.extra.len()),
            Some(Err(e)) => d.field("failed", &e.to_string()),
            None => d.field("parsed", &false),
        };
        d.finish_non_exhaustive()
    }
}

impl UpstreamTrust {
    /// The system store plus every certificate in each `extra_roots` PEM file.
    ///
    /// An `extra_roots` file that cannot be read, or holds no certificate rustls can
    /// use, is an error naming the file (a typo must not silently drop a root). An
    /// empty system store is accepted only if `extra_roots` supplies at least one root.
    pub fn load(extra_roots: &[PathBuf]) -> Result<Self, TlsError> {
        load_roots(extra_roots).map(|r| Self::ready(r, extra_roots.to_vec()))
    }

    /// Returns at once; reads the system store as text (for the session bundle) and
    /// checks `extra_roots` when first asked ([`UpstreamTrust::session_bundle`],
    /// [`UpstreamTrust::wait`]), and parses the upstream roots when they are first
    /// needed ([`UpstreamTrust::client_config`]).
    ///
    /// The same failures as [`UpstreamTrust::load`], with the same errors, at two
    /// points: [`UpstreamTrust::wait`] and the bundles report an `extra_roots` file
    /// that cannot be read or holds no usable CA certificate, and a system store
    /// without a single certificate when `extra_roots` is empty (a missing or
    /// unreadable store) — so a session that waits for its bundle is refused before it
    /// starts, as before. Only a store whose certificates are all unusable to rustls
    /// (present as text, none parsable) is found at the first upstream handshake,
    /// which then fails with [`TlsError::NoRoots`].
    ///
    /// Deferred rather than read on a thread of its own: `warden run` asks for the
    /// bundle right after it has sent the spec, while it waits for the init anyway,
    /// and a thread reading it earlier competed with the init's start on two cores
    /// (docs/benchmarks.md, "Sixth round").
    pub fn deferred(extra_roots: Vec<PathBuf>) -> Self {
        Self {
            extra_roots,
            roots: OnceLock::new(),
            parts: OnceLock::new(),
            configs: Default::default(),
        }
    }

    /// Like [`UpstreamTrust::load`] with an explicit system store (tests, or a host
    /// whose store Warden is told about some other way).
    pub fn from_parts(
        system: Vec<CertificateDer<'static>>,
        extra_roots: &[PathBuf],
    ) -> Result<Self, TlsError> {
        roots_from_parts(system, extra_roots).map(|r| Self::ready(r, extra_roots.to_vec()))
    }

    fn ready(roots: Roots, extra_roots: Vec<PathBuf>) -> Self {
        Self {
            extra_roots,
            roots: OnceLock::from(Ok(roots)),
            parts: OnceLock::new(),
            configs: Default::default(),
        }
    }

    /// Waits until what a session needs before it starts is there: the system store
    /// read (not empty, unless `extra_roots` has a root) and every `extra_roots` file
    /// usable. The error [`UpstreamTrust::load`] would have returned if not.
    pub fn wait(&self) -> Result<(), TlsError> {
        self.parts().map(|_| ())
    }

    fn parts(&self) -> Result<&BundleParts, TlsError> {
        let parts = self.parts.get_or_init(|| match self.roots.get() {
            // Parsed eagerly (load, from_parts): the same certificates, as text.
            Some(Ok(r)) => Ok(BundleParts {
                system: SystemPem::from_der(r.system.iter().map(|c| c.as_ref())),
                extra: r.extra.clone(),
            }),
            Some(Err(e)) => Err(e.clone()),
            // Deferred: the store read as text.
            None => load_parts(&self.extra_roots).map_err(Arc::new),
        });
        match parts {
            Ok(parts) => Ok(parts),
            Err(e) => Err(TlsError::Shared(e.clone())),
        }
    }

    fn roots(&self) -> Result<&Roots, TlsError> {
        // A store that failed the session-start check fails here the same way.
        if let Some(Err(e)) = self.parts.get() {
            return Err(TlsError::Shared(e.clone()));
        }
        let roots = self
            .roots
            .get_or_init(|| load_roots(&self.extra_roots).map_err(Arc::new));
        match roots {
            Ok(roots) => Ok(roots),
            Err(e) => Err(TlsError::Shared(e.clone())),
        }
    }

    /// A client config verifying upstream certificates (chain and name) against these
    /// roots, offering `alpn`.
    pub fn client_config(&self, alpn: Alpn) -> Result<Arc<ClientConfig>, TlsError> {
        let slot = &self.configs[alpn.index()];
        if let Some(config) = slot.get() {
            return Ok(config.clone());
        }
        let roots = self.roots()?;
        let mut config = ClientConfig::builder_with_provider(roots.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.store.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.protocols();
        let config = Arc::new(config);
        Ok(slot.get_or_init(|| config).clone())
    }

    /// The system roots and extra roots as one PEM bundle (no session CA).
    pub fn pem_bundle(&self) -> Result<String, TlsError> {
        let parts = self.parts()?;
        let mut out = parts.system.text.clone();
        for cert in &parts.extra {
            push_pem(&mut out, cert);
        }
        Ok(out)
    }

    /// The session's trust bundle: system roots, then the session CA, then the extra
    /// roots, each certificate once. Certificates only: it never contains a private
    /// key. The system roots are the store's certificates copied as text (see
    /// [`UpstreamTrust::deferred`]): the same certificates the upstream
    /// roots are parsed from.
    pub fn session_bundle(&self, ca: &SessionCa) -> Result<String, TlsError> {
        let parts = self.parts()?;
        // One allocation: the bundle is a few hundred KB of fresh pages.
        let mut out =
            String::with_capacity(parts.system.text.len() + (1 + parts.extra.len()) * 4096);
        out.push_str(&parts.system.text);
        let mut added: Vec<Vec<u8>> = Vec::new();
        for cert in std::iter::once(ca.cert_der()).chain(&parts.extra) {
            let body = store::body_of(cert.as_ref());
            if !added.contains(&body) && !parts.system.contains(&body) {
                store::push_block(&mut out, &body);
                added.push(body);
            }
        }
        Ok(out)
    }
}

/// What [`UpstreamTrust::deferred`] reads before a session starts: the
/// system store as text and the extra roots, checked as [`roots_from_parts`] checks them.
fn load_parts(extra_roots: &[PathBuf]) -> Result<BundleParts, TlsError> {
    let system = SystemPem::load();
    let mut store = RootCertStore::empty();
    let mut extra = Vec::new();
    for path in extra_roots {
        for cert in read_pem_certs(path)? {
            store.add(cert.clone()).map_err(|e| TlsError::ExtraRoot {
                path: path.clone(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
            extra.push(cert);
        }
    }
    if system.len() == 0 && store.is_empty() {
        return Err(TlsError::NoRoots {
            detail: if system.errors.is_empty() {
                "no certificates found".to_string()
            } else {
                system.errors.join("; ")
            },
        });
    }
    Ok(BundleParts {
        system,
        extra: dedup(extra),
    })
}

fn load_roots(extra_roots: &[PathBuf]) -> Result<Roots, TlsError> {
    // The same paths as the session bundle's text (`store::store_paths`).
    let (file, dirs) = store::store_paths();
    let mut native = rustls_native_certs::load_certs_from_paths(file.as_deref(), None);
    for dir in &dirs {
        let more = rustls_native_certs::load_certs_from_paths(None, Some(dir));
        native.certs.extend(more.certs);
        native.errors.extend(more.errors);
    }
    let detail = if native.errors.is_empty() {
        "no certificates found".to_string()
    } else {
        native
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    roots_from_parts(native.certs, extra_roots).map_err(|e| match e {
        TlsError::NoRoots { .. } => TlsError::NoRoots { detail },
        other => other,
    })
}

fn roots_from_parts(
    system: Vec<CertificateDer<'static>>,
    extra_roots: &[PathBuf],
) -> Result<Roots, TlsError> {
    let mut store = RootCertStore::empty();
    let system = dedup(system);
    // Distribution bundles carry the odd certificate webpki cannot parse; those
    // are skipped, as every rustls-based client does.
    store.add_parsable_certificates(system.iter().cloned());
    let mut extra = Vec::new();
    for path in extra_roots {
        let certs = read_pem_certs(path)?;
        for cert in certs {
            store.add(cert.clone()).map_err(|e| TlsError::ExtraRoot {
                path: path.clone(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
            extra.push(cert);
        }
    }
    if store.is_empty() {
        return Err(TlsError::NoRoots {
            detail: "no certificates found".to_string(),
        });
    }
    Ok(Roots {
        system,
        extra: dedup(extra),
        store: Arc::new(store),
        provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    })
}

impl SessionCa {
    /// The bundle the sandbox overlays at `/etc/ssl/certs/ca-certificates.crt` and
    /// that [`ca_env`] points clients at: the system roots, this session's CA and the
    /// extra roots. Convenience for [`UpstreamTrust::load`] + [`UpstreamTrust::session_bundle`].
    pub fn trust_bundle(&self, extra_roots: &[PathBuf]) -> Result<String, TlsError> {
        UpstreamTrust::load(extra_roots)?.session_bundle(self)
    }
}

/// The client config for upstream connections: system roots plus `extra_roots`, ALPN
/// `h2` and `http/1.1`. Loads the system store on every call; a proxy should keep an
/// [`UpstreamTrust`] instead.
pub fn upstream_client_config(extra_roots: &[PathBuf]) -> Result<Arc<ClientConfig>, TlsError> {
    UpstreamTrust::load(extra_roots)?.client_config(Alpn::H2AndHttp1)
}

/// Environment variables that make the usual clients trust `bundle_path` (the trust
/// bundle as seen inside the session). Set them in the session's environment next to
/// the overlaid system bundle, for clients that ship their own store (Python
/// `requests`/`certifi`, Node, pip, the AWS CLI, Deno) or read only a variable.
pub fn ca_env(bundle_path: &Path) -> Vec<(String, String)> {
    let path = bundle_path.display().to_string();
    [
        "SSL_CERT_FILE",       // OpenSSL, Python ssl, Go, rustls-native-certs, uv
        "REQUESTS_CA_BUNDLE",  // Python requests
        "CURL_CA_BUNDLE",      // curl, Python requests
        "NODE_EXTRA_CA_CERTS", // Node (added to its built-in store)
        "GIT_SSL_CAINFO",      // git
        "PIP_CERT",            // pip (it vendors certifi otherwise)
        "AWS_CA_BUNDLE",       // AWS CLI and SDKs
        "CARGO_HTTP_CAINFO",   // cargo
        "DENO_CERT",           // Deno
        "HTTPLIB2_CA_CERTS",   // httplib2 (Google API clients)
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", // gRPC core (C, Python, Ruby)
        "NIX_SSL_CERT_FILE",   // Nix-built programs
        "BUNDLE_SSL_CA_CERT",  // Ruby bundler
    ]
    .into_iter()
    .map(|name| (name.to_string(), path.clone()))
    .collect()
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::ExtraRoot {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block found".to_string()));
    }
    Ok(certs)
}

fn dedup(certs: Vec<CertificateDer<'static>>) -> Vec<CertificateDer<'static>> {
    // The system store's loader returns its certificates sorted and deduplicated.
    if certs.windows(2).all(|w| w[0].as_ref() < w[1].as_ref()) {
        return certs;
    }
    let mut seen = HashSet::new();
    let first: Vec<bool> = certs.iter().map(|c| seen.insert(c.as_ref())).collect();
    drop(seen);
    certs
        .into_iter()
        .zip(first)
        .filter_map(|(c, first)| first.then_some(c))
        .collect()
}

fn push_pem(out: &mut String, cert: &CertificateDer<'_>) {
    store::push_block(out, &store::body_of(cert.as_ref()));
}
